"""The one place torchd reaches into uvicorn: its httptools protocol, extended with the direct
path and the connection limits, and its server (with daemon/http/uvicorn_exchange.py, the
``Exchange`` the direct path, daemon/http/direct.py, writes through).

Why a subclass of uvicorn's protocol rather than a protocol of torchd's own (measured, see the
README's "The inference port's HTTP/1.1"): uvicorn's connection code costs a small share of the
daemon's CPU per request, and it brings keep-alive, pipelining, read flow control, chunked
bodies, HTTP/1.0, ``Expect: 100-continue``, TLS and the graceful drain, tested by uvicorn's
users. The price is a dependency on names uvicorn does not promise to keep. They are all
listed in ``UVICORN_PRIVATE`` (the exchange's too); setup.cfg pins uvicorn below its next
minor release, and tests/daemon/http/test_uvicorn_adapter.py checks every one of them against
the installed uvicorn, so an upgrade that moves one fails a test rather than the fast path.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from daemon.http.common import DISCONNECT_HOOKS, DirectPathLike
from daemon.http.uvicorn_exchange import Exchange
from daemon.http.limits import (BODY, HEAD, OVER, SEND, SILENT, ClosedCount,
                                ConnectionLimits, chunk_size_before, timeout_answer,
                                too_large_answer, unavailable_answer)
from daemon.jsonlayout import error_bytes
from daemon.osutil import send_queue

MAX_INCOMPLETE = 64 * 1024   # bytes of request head a listener takes before it gives up

# Every uvicorn name torchd uses that is not uvicorn's documented API.
UVICORN_PRIVATE = {
    "module": ["uvicorn.protocols.http.httptools_impl.HttpToolsProtocol"],
    "HttpToolsProtocol methods overridden": [
        "_start_asgi_task", "connection_made", "connection_lost", "on_message_begin",
        "on_url", "on_header", "shutdown", "send_400_response", "pause_writing",
        "resume_writing", "data_received"],
    "httptools callbacks added": ["on_chunk_header", "on_chunk_complete"],
    "HttpToolsProtocol attributes": ["app", "cycle", "transport", "flow", "loop",
                                     "server_state", "scope", "connections"],
    "RequestResponseCycle attributes": [
        "scope", "message_event", "disconnected", "more_body", "body", "keep_alive",
        "response_started", "response_complete", "on_response", "waiting_for_100_continue",
        "transport"],
    "FlowControl attributes": ["resume_reading", "write_paused", "read_paused"],
    "ServerState attributes": ["default_headers", "connections"],
    "Server methods overridden": ["capture_signals", "on_tick", "startup"],
    "Server attributes": ["config", "lifespan", "server_state", "servers", "started"],
}


class InferenceProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with TCP_NODELAY on every accepted TCP connection, a bound
    on the request head, the direct path, and hang-ups told at once.

    uvicorn writes a response's head and body in two writes; with Nagle's algorithm on, the
    second waits for the client's delayed ACK (~40 ms) on every keep-alive request. httptools
    itself puts no limit on a request's URL and headers (h11 stops at 64 KiB on the hypercorn
    ports): past MAX_INCOMPLETE bytes the request is answered 431 and the connection closed,
    before any of it reaches the app or a worker. ``direct`` is set per listener (a subclass
    made by ``protocol_for``), never looked up through the app, which uvicorn may wrap (a
    TRACE log level wraps it in its message logger).

    ``limits`` (daemon/http/limits.py) are enforced by ``check_stalled``, which the server's
    sweep calls for every connection a few times a second: what it costs a request is a clock
    read as its head begins and a test per read (measured: 0.1-0.3 us, against ~130 us for a
    no-op request). A chunk's declared size is read from the bytes of the read that declared
    it, after the parser has taken them (httptools tells that a chunk began, not its size)."""

    direct: DirectPathLike | None = None
    exchange: Exchange | None = None   # the direct path's request in progress
    limits = ConnectionLimits()
    _head_bytes = 0
    _head_too_large = False
    _over_limit = False      # past max_connections: its first request gets 503
    _began = 0.0             # when the head in progress began (a new connection: its start)
    _body_mark: tuple[int, int] | None = None   # the body as the sweep last saw it
    _body_at = 0.0           # when the sweep last saw the body grow
    _chunk_at = -1           # the body's length when this read's last chunk header came
    _send_stalled_at = 0.0   # since when its client has taken none of what waits unsent
    _send_mark = 0           # how much waited unsent then (less later: it took some)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        set_nodelay(transport)
        super().connection_made(transport)
        self._began = self.loop.time()
        if len(self.connections) > self.limits.max_connections:
            self._over_limit = True

    def data_received(self, data: bytes) -> None:
        HttpToolsProtocol.data_received(self, data)   # not super(): this runs for every read
        if self._chunk_at >= 0:
            self._check_chunk_size(data)

    def on_chunk_header(self) -> None:
        self._chunk_at = -1 if self.cycle is None else len(self.cycle.body)

    def on_chunk_complete(self) -> None:
        self._chunk_at = -1

    def _check_chunk_size(self, data: bytes) -> None:
        """The chunk whose header this read held, and which it did not complete: 413 at once
        when it declares more than a whole body may hold. Its data followed its size line to
        the end of the read, so the line ends where that data began."""
        cycle, at = self.cycle, self._chunk_at
        self._chunk_at = -1
        if cycle is None or cycle.response_complete or self.transport.is_closing():
            return
        following = len(cycle.body) - at
        size = chunk_size_before(data, len(data) - following) if following >= 0 else None
        if size is not None and size > self.limits.max_body:
            self._answer_and_close(too_large_answer(self.limits), cycle)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        """A prediction request takes the direct path (daemon/http/direct.py) unless it is
        one the ASGI app must serve (or uvicorn answers it with its own app, a 503)."""
        if self.direct is not None and app is self.app \
                and self.direct.take(Exchange(self, cycle)):
            return
        # The list is shared by every copy of the scope the app makes; see connection_lost.
        cycle.scope[DISCONNECT_HOOKS] = []
        if cycle.scope["method"] != "HEAD":   # a HEAD answer is its head: no body to wait for
            cycle.transport = HeadWithBody(self.transport)
        super()._start_asgi_task(cycle, app)

    def connection_lost(self, exc: Exception | None) -> None:
        """Tells the request in progress at once, by its hooks: a task per request awaiting
        ``receive()`` for the disconnect would cost more than the rest of its routing."""
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and not cycle.response_complete:
            hooks: list[Any] = cycle.scope.get(DISCONNECT_HOOKS, [])  # type: ignore[assignment]
            for hook in hooks:
                hook()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._send_stalled_at = self.loop.time()
        self._send_mark = self._unsent()
        if self.exchange is not None and self.exchange.listener is not None:
            self.exchange.listener.on_writing_paused()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._send_stalled_at = 0.0
        if self.exchange is not None and self.exchange.listener is not None:
            self.exchange.listener.on_writing_resumed()

    def on_message_begin(self) -> None:
        if self._over_limit:
            raise ValueError("past max_connections")   # the parser stops: send_400_response
        self._head_bytes = 0
        self._began = self.loop.time()
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        super().on_header(name, value)

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_INCOMPLETE:
            self._head_too_large = True
            raise ValueError("request head too large")   # the parser stops; see below

    def shutdown(self) -> None:
        """The server is stopping. An idle TLS connection with nothing left to write is
        aborted: closing it would wait for the client's close_notify, which a client keeping it
        alive never sends, and uvicorn would wait the loop's TLS shutdown timeout (30 s) for it.
        Anything else closes as uvicorn closes it (a request in progress first finishes)."""
        idle = self.cycle is None or self.cycle.response_complete
        if idle and self.transport.get_extra_info("sslcontext") is not None \
                and self.transport.get_write_buffer_size() == 0:
            self.transport.abort()
            return
        super().shutdown()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request the parser gave up on: 431 or 503 when it was ours."""
        if self._over_limit:
            self._answer_and_close(unavailable_answer(self.limits), None)
            return
        if not self._head_too_large:
            super().send_400_response(msg)
            return
        body = error_bytes(431, "BadRequestException",
                           f"Request header fields too large (over {MAX_INCOMPLETE} bytes)")
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                             b"content-type: application/json\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
                             + body)
        self.transport.close()


    # ---- limits (daemon/http/limits.py) -----------------------------------------------------

    def check_stalled(self, now: float) -> str | None:
        """Close this connection if its client holds it past a limit; what it was closed
        for, or None. A head is timed from its first byte (a new connection's from its
        start), a body from the last time the sweep saw it grow; a connection whose reading
        the listener paused (flow control, a pipelined request waiting) is not the client's
        doing. Once its response fills the transport's buffer (64 KiB), a client that takes
        none of it (what waits unsent, in the transport and the socket, never less at a
        sweep, nor the buffer drained below 16 KiB) for ``send_timeout`` has stopped reading,
        even once the connection is closing (a close waits for the buffer to flush): it is
        dropped, its buffer with it."""
        cycle = self.cycle
        if self._send_stalled_at and self._send_stalled(now):
            self._send_stalled_at = 0.0
            self._reset()   # connection_lost tells the request in progress
            return SEND
        if self.transport.is_closing():
            return None
        if self._began:
            if cycle is None or cycle.scope is not self.scope:   # its head is still coming
                return self._check_head(now, cycle)
            self._began = 0.0
        if cycle is None or not cycle.more_body or self.flow.read_paused:
            self._body_mark = None
            return None
        mark = (id(cycle.body), len(cycle.body))
        if mark != self._body_mark:
            self._body_mark, self._body_at = mark, now
            return None
        if now - self._body_at <= self.limits.body_timeout:
            return None
        self._answer_and_close(timeout_answer(BODY, self.limits), cycle)
        return BODY

    def _send_stalled(self, now: float) -> bool:
        waiting = self._unsent()
        if waiting < self._send_mark:   # it took some since the last sweep
            self._send_stalled_at = now
        self._send_mark = waiting
        return now - self._send_stalled_at > self.limits.send_timeout

    def _reset(self) -> None:
        """Drop the connection with what waits unsent, the kernel's queue too: a plain close
        leaves the socket to the kernel, which goes on offering its queue to a client that
        takes nothing (nginx's reset_timedout_connection: SO_LINGER 0, then close)."""
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def _unsent(self) -> int:
        """What its client has yet to take: the transport's buffer and the socket's."""
        sock = self.transport.get_extra_info("socket")
        kernel = send_queue(sock.fileno()) if sock is not None else 0
        return self.transport.get_write_buffer_size() + kernel

    def _check_head(self, now: float, earlier: Any) -> str | None:
        if earlier is not None and not earlier.response_complete:
            return None   # the request before it is being answered; reading waits for that
        if now - self._began <= self.limits.head_allowance(self._over_limit):
            return None
        if self.scope is None or self._over_limit:   # not a byte of a request came
            self.transport.close()
            return OVER if self._over_limit else SILENT
        self._answer_and_close(timeout_answer(HEAD, self.limits), None)
        return HEAD

    def _answer_and_close(self, answer: bytes, cycle: Any) -> None:
        """Write ``answer`` unless ``cycle``'s response has begun, then close. The request's
        app, if it waits for the body, hears the disconnect and writes nothing."""
        if cycle is None or not cycle.response_started:
            self.transport.write(answer)
        self.transport.close()


def protocol_for(direct: DirectPathLike | None,
                 limits: ConnectionLimits | None = None) -> type[InferenceProtocol]:
    """The protocol class of one inference listener, serving ``direct``'s requests itself."""
    return type("InferenceProtocol", (InferenceProtocol,),
                {"direct": direct, "limits": limits or ConnectionLimits()})


class HeadWithBody:
    """A request cycle's view of its connection on the ASGI path: the response head is held
    and goes out in one write with the first part of the body.

    uvicorn writes the head and the body separately; on a TCP_NODELAY socket that is two sends
    and two segments per response, the most expensive lines of a no-op request (profiled).
    An interim "100 Continue" is never held: the client waits for it before sending its body.
    """

    __slots__ = ("transport", "_head", "_started")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._head: bytes | None = None
        self._started = False

    def write(self, data: bytes) -> None:
        if self._head is not None:
            data, self._head = self._head + data, None
        elif not self._started and not data.startswith(b"HTTP/1.1 1"):
            self._started = True
            self._head = data
            return
        self.transport.write(data)

    def close(self) -> None:
        if self._head is not None:
            self.transport.write(self._head)
            self._head = None
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class InferenceServer(uvicorn.Server):
    """uvicorn's server without its signal handlers: the daemon owns SIGTERM and SIGINT and
    closes the listener itself (``should_exit``), then uvicorn drains in-flight requests (it
    waits for every connection to close: a direct-path request's connection closes once its
    response is out, as an ASGI one's does)."""

    TICK = 0.1   # seconds between uvicorn's calls of on_tick

    def __init__(self, config: uvicorn.Config, name: str = "inference") -> None:
        super().__init__(config)
        self.closed = ClosedCount(name)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's start on the listener's own sockets (the daemon's way; anything else is
        uvicorn's), with the TLS handshake given the head's limit: uvicorn offers no setting
        for it, and its loop's default (60 s) would let a client that never finishes one
        hold a descriptor that long, unseen by the sweep (a connection is made only after)."""
        if sockets is None or self.config.ssl is None:
            await super().startup(sockets)
            return
        config, loop = self.config, asyncio.get_running_loop()
        limits = getattr(config.http_protocol_class, "limits", None) or ConnectionLimits()
        await self.lifespan.startup()   # lifespan="off": nothing runs

        protocol_class: Any = config.http_protocol_class

        def create_protocol() -> asyncio.Protocol:
            return protocol_class(config=config, server_state=self.server_state,
                                  app_state=self.lifespan.state)

        self.servers = [await loop.create_server(
            create_protocol, sock=sock, ssl=config.ssl, backlog=config.backlog,
            ssl_handshake_timeout=limits.header_timeout) for sock in sockets]
        self.started = True

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's tick, and every few ticks a sweep of the open connections for clients
        holding one past a limit: one pass for the whole listener, no timer per request."""
        limits = getattr(self.config.http_protocol_class, "limits", None)
        if limits is not None and counter % max(1, round(limits.sweep_interval / self.TICK)) \
                == 0:
            self.sweep(asyncio.get_running_loop().time())
        return await super().on_tick(counter)

    def sweep(self, now: float) -> None:
        for connection in list(self.server_state.connections):
            check = getattr(connection, "check_stalled", None)
            if check is not None:
                self.closed.add(check(now))
        self.closed.flush()


def uvicorn_config(app: Any, direct: DirectPathLike | None, tls: tuple[str, str] | None,
                   backlog: int, keep_alive: int, graceful: float,
                   limits: ConnectionLimits | None = None) -> uvicorn.Config:
    """``tls``: the certificate and key files, or None for plain HTTP."""
    certificate, key = tls or (None, None)
    return uvicorn.Config(app, http=protocol_for(direct, limits), loop="none", lifespan="off",
                          ws="none", interface="asgi3", log_config=None, access_log=False,
                          proxy_headers=False, server_header=False, backlog=backlog,
                          timeout_keep_alive=keep_alive,
                          timeout_graceful_shutdown=int(graceful), ssl_certfile=certificate,
                          ssl_keyfile=key)
