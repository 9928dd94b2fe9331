"""The contract between torchd and the uvicorn it runs on (daemon/http/uvicorn_adapter.py):
every name of uvicorn's that is not its documented API, checked against the installed uvicorn,
and the version bound setup.cfg declares."""
from __future__ import annotations

import asyncio
import configparser
import importlib
import inspect
import re
import socket
from importlib.metadata import version
from pathlib import Path

import uvicorn
import uvloop
from uvicorn.protocols.http import flow_control, httptools_impl

from daemon.http.uvicorn_adapter import (UVICORN_PRIVATE, InferenceServer, protocol_for,
                                         uvicorn_config)
from tests.support.waiting import until

REPO = Path(__file__).resolve().parents[3]


def test_the_installed_uvicorn_is_within_the_declared_bound():
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    (line,) = [r for r in parser["options"]["install_requires"].split("\n")
               if r.strip().startswith("uvicorn")]
    low, high = re.fullmatch(r"uvicorn>=([\d.]+),<([\d.]+)", line.strip()).groups()

    def key(v: str) -> tuple:
        return tuple(int(p) for p in v.split(".")[:3])
    assert key(low) <= key(version("uvicorn")) < key(high)


def test_every_private_name_exists_in_the_installed_uvicorn():
    (path,) = UVICORN_PRIVATE["module"]
    module_name, _, class_name = path.rpartition(".")
    assert getattr(importlib.import_module(module_name), class_name) is \
        httptools_impl.HttpToolsProtocol
    base = httptools_impl.HttpToolsProtocol
    for name in UVICORN_PRIVATE["HttpToolsProtocol methods overridden"]:
        assert inspect.isfunction(getattr(base, name, None)), name
    assert callable(getattr(uvicorn.Server, "capture_signals", None))
    for name in UVICORN_PRIVATE["FlowControl attributes"]:
        assert name in inspect.getsource(flow_control.FlowControl), name
    seen = uvloop.run(_attributes_of_a_live_request())
    for group in ("HttpToolsProtocol attributes", "RequestResponseCycle attributes",
                  "ServerState attributes", "Server attributes"):
        for name in UVICORN_PRIVATE[group]:
            assert name in seen[group], (group, name)


async def _attributes_of_a_live_request() -> dict[str, set[str]]:
    """The attribute names of uvicorn's protocol, request cycle and server state while a real
    request is served over loopback."""
    seen: dict[str, set[str]] = {}

    class Look:
        def take(self, exchange) -> bool:
            protocol, cycle = exchange.protocol, exchange.cycle
            seen["HttpToolsProtocol attributes"] = set(vars(protocol))
            seen["RequestResponseCycle attributes"] = set(vars(cycle))
            seen["ServerState attributes"] = set(vars(protocol.server_state))
            exchange.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            exchange.complete()
            return True

    async def app(scope, receive, send):   # never reached: the direct path takes it
        raise AssertionError("not the direct path")

    sock = socket.create_server(("127.0.0.1", 0))
    server = InferenceServer(uvicorn_config(app, Look(), None, backlog=8, keep_alive=5,
                                            graceful=5))
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        await until(lambda: server.started, timeout=10, interval=0.01, what="the server started")
        seen["Server attributes"] = set(vars(server))
        reader, writer = await asyncio.open_connection(*sock.getsockname())
        writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(
            b"HTTP/1.1 204")
        writer.close()
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
    return seen


def test_each_listener_gets_a_protocol_class_of_its_own():
    first, second = object(), object()
    a, b = protocol_for(first), protocol_for(second)
    assert a.direct is first and b.direct is second
    assert issubclass(a, httptools_impl.HttpToolsProtocol)


def test_httptools_calls_the_chunk_callbacks_the_protocol_adds():
    """InferenceProtocol's on_chunk_header/on_chunk_complete are httptools' callbacks (it looks
    them up when a parser is made), called around each chunk of a chunked body."""
    import httptools

    assert set(UVICORN_PRIVATE["httptools callbacks added"]) == {"on_chunk_header",
                                                                 "on_chunk_complete"}
    calls: list[str] = []

    class Seen:
        def on_chunk_header(self) -> None:
            calls.append("header")

        def on_chunk_complete(self) -> None:
            calls.append("complete")

    parser = httptools.HttpRequestParser(Seen())
    parser.feed_data(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n0\r\n\r\n")
    assert calls == ["header", "complete", "header", "complete"]
