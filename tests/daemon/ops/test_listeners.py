"""The inference listener (daemon/http/uvicorn_adapter.py): uvicorn over a socket torchd bound, with
TCP_NODELAY on every accepted connection and the daemon's own shutdown (no signal handlers)."""
from __future__ import annotations

import asyncio
import signal
import socket

import uvloop

from daemon.http.common import DISCONNECT_HOOKS
from daemon.http.uvicorn_adapter import (InferenceProtocol, InferenceServer, set_nodelay,
                                         uvicorn_config)
from tests.support.waiting import until


async def answer(scope, receive, send):
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


class SocketTransport:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_extra_info(self, name: str):
        return self.sock if name == "socket" else None


def nodelay(sock) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_set_nodelay_turns_nagle_off_on_tcp_and_leaves_unix_sockets_alone():
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    left, right = socket.socketpair(socket.AF_UNIX)
    try:
        accepted.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        set_nodelay(SocketTransport(accepted))
        assert nodelay(accepted) == 1
        set_nodelay(SocketTransport(left))   # no TCP options on a Unix socket: no error
    finally:
        for sock in (server, client, accepted, left, right):
            sock.close()


def test_the_inference_server_sets_nodelay_and_leaves_the_signals_to_the_daemon():
    before = signal.getsignal(signal.SIGTERM)

    async def client(host, port, server):
        assert signal.getsignal(signal.SIGTERM) is before   # uvicorn installed none
        reader, writer = await asyncio.open_connection(host, port)
        for _ in range(2):   # keep-alive: the same connection answers twice
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\nok")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        (connection,) = server.server_state.connections
        assert isinstance(connection, InferenceProtocol)
        assert nodelay(connection.transport.get_extra_info("socket")) == 1
        writer.close()
    uvloop.run(serve_app(answer, client))


# ---- the response head goes out with the body; hooks hear of a client that hangs up --------

async def serve_app(app, client, direct=None):
    """Run ``app`` on a real InferenceServer over a loopback socket; ``client(host, port,
    server)`` talks to it."""
    sock = socket.create_server(("127.0.0.1", 0))
    server = InferenceServer(uvicorn_config(app, direct, None, backlog=16, keep_alive=5,
                                            graceful=5))
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        await until(lambda: server.started, timeout=10, interval=0.01, what="the server started")
        await asyncio.wait_for(client(*sock.getsockname(), server), 10)
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)


async def nothing_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        await asyncio.wait_for(reader.read(1), seconds)
    except asyncio.TimeoutError:
        return True
    return False


def test_the_head_waits_for_the_first_body_part_and_leaves_with_it():
    async def streaming(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.3)   # the head must not leave before the body does
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await asyncio.sleep(0.3)
        await send({"type": "http.response.body", "body": b"last"})

    async def client(host, port, _server):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await nothing_within(reader, 0.2)
        first = await reader.readuntil(b"first\r\n")
        assert first.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"transfer-encoding: chunked" in first
        assert await reader.readuntil(b"0\r\n\r\n") == b"4\r\nlast\r\n0\r\n\r\n"
        writer.close()
    uvloop.run(serve_app(streaming, client))


def test_an_interim_100_continue_is_never_held():
    async def echo(scope, receive, send):
        body = (await receive())["body"]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def client(host, port, _server):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        # the client sends its body only once it is told to continue
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        assert (await reader.readuntil(b"hello")).startswith(b"HTTP/1.1 200 OK\r\n")
        writer.close()
    uvloop.run(serve_app(echo, client))


def test_disconnect_hooks_run_when_the_client_hangs_up_mid_request():
    heard, entered, release = asyncio.Event(), asyncio.Event(), asyncio.Event()
    finished = []

    async def slow(scope, receive, send):
        scope = {**scope}   # a copy, as middleware makes: the hooks list is shared
        scope[DISCONNECT_HOOKS].append(heard.set)
        entered.set()
        await release.wait()   # the app runs on until the client has heard the hook
        finished.append(True)

    async def client(host, port, _server):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(entered.wait(), 5)   # the request is in the app
        writer.close()
        await asyncio.wait_for(heard.wait(), 5)     # at once: the app has not ended
        assert not finished
        release.set()
    uvloop.run(serve_app(slow, client))


def test_disconnect_hooks_are_not_called_once_the_response_is_complete():
    called = []

    async def quick(scope, receive, send):
        scope[DISCONNECT_HOOKS].append(lambda: called.append(True))
        await answer(scope, receive, send)

    async def client(host, port, server):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"\r\n\r\nok")
        writer.close()
        # the server has seen the connection go (connection_lost, where the hooks would run)
        await until(lambda: not server.server_state.connections, timeout=5,
                    what="the connection closed on the server's side")
        assert called == []
    uvloop.run(serve_app(quick, client))


def test_each_request_is_offered_to_the_apps_direct_path_before_its_asgi_task():
    """The hook the inference app's direct path (daemon/http/direct.py) hangs on: if uvicorn
    stopped calling it, every prediction would quietly take the slower ASGI path."""
    offered = []

    class Direct:
        def take(self, exchange) -> bool:
            offered.append(exchange.scope["path"])
            return exchange.scope["path"] == "/taken" and _answer_directly(exchange)

    def _answer_directly(exchange) -> bool:
        exchange.write(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\ndirect")
        exchange.complete()
        return True

    async def app(scope, receive, send):
        await answer(scope, receive, send)

    async def client(host, port, _server):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"\r\n\r\nok")
        writer.write(b"GET /taken HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"\r\n\r\ndirect")
        writer.write(b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n")   # the connection serves on
        await reader.readuntil(b"\r\n\r\nok")
        writer.close()
        assert offered == ["/one", "/taken", "/two"]
    uvloop.run(serve_app(app, client, direct=Direct()))
