"""The one place torchd reaches into uvicorn: its httptools protocol, extended, and the
``Exchange`` the direct path (daemon/http/direct.py) writes through.

Why a subclass of uvicorn's protocol rather than a protocol of torchd's own (measured, see the
README's "The inference port's HTTP/1.1"): uvicorn's connection code costs a small share of the
daemon's CPU per request, and it brings keep-alive, pipelining, read flow control, chunked
bodies, HTTP/1.0, ``Expect: 100-continue``, TLS and the graceful drain, tested by uvicorn's
users. The price is a dependency on names uvicorn does not promise to keep. They are all here,
listed in ``UVICORN_PRIVATE``; setup.cfg pins uvicorn below its next minor release, and
tests/daemon/http/test_uvicorn_adapter.py checks every one of them against the installed
uvicorn, so an upgrade that moves one fails a test rather than the fast path.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any, Protocol

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from daemon.http.common import DISCONNECT_HOOKS, DirectPathLike

MAX_INCOMPLETE = 64 * 1024   # bytes of request head a listener takes before it gives up

# Every uvicorn name torchd uses that is not uvicorn's documented API.
UVICORN_PRIVATE = {
    "module": ["uvicorn.protocols.http.httptools_impl.HttpToolsProtocol"],
    "HttpToolsProtocol methods overridden": [
        "_start_asgi_task", "connection_made", "connection_lost", "on_message_begin",
        "on_url", "on_header", "shutdown", "send_400_response", "pause_writing",
        "resume_writing"],
    "HttpToolsProtocol attributes": ["app", "cycle", "transport", "flow", "loop",
                                     "server_state"],
    "RequestResponseCycle attributes": [
        "scope", "message_event", "disconnected", "more_body", "body", "keep_alive",
        "response_started", "response_complete", "on_response", "waiting_for_100_continue",
        "transport"],
    "FlowControl attributes": ["resume_reading", "write_paused"],
    "ServerState attributes": ["default_headers"],
    "Server methods overridden": ["capture_signals"],
}


class DirectListener(Protocol):
    """What an exchange tells the request it carries (daemon/http/direct.py)."""

    def on_request_event(self) -> None:
        """More of the body came, the body is complete, or the client hung up."""

    def on_writing_paused(self) -> None: ...

    def on_writing_resumed(self) -> None: ...


class Exchange:
    """One request and its response on a connection, as the direct path sees it.

    It stands in for the request cycle's ``message_event``: uvicorn ``set``s that for each part
    of the body, at the body's end and when the client hangs up."""

    __slots__ = ("protocol", "cycle", "listener")

    def __init__(self, protocol: InferenceProtocol, cycle: Any) -> None:
        self.protocol = protocol
        self.cycle = cycle
        self.listener: DirectListener | None = None

    # ---- the request ------------------------------------------------------------------------

    @property
    def scope(self) -> dict[str, Any]:
        return self.cycle.scope

    @property
    def expects_continue(self) -> bool:
        return bool(self.cycle.waiting_for_100_continue)

    @property
    def body(self) -> bytearray:
        return self.cycle.body

    @property
    def more_body(self) -> bool:
        return bool(self.cycle.more_body)

    @property
    def disconnected(self) -> bool:
        return bool(self.cycle.disconnected)

    def listen(self, listener: DirectListener) -> None:
        self.listener = listener
        self.cycle.message_event = self
        self.protocol.exchange = self

    def resume_reading(self) -> None:
        """uvicorn pauses reading past 64 KiB of body; the direct path holds more."""
        self.protocol.flow.resume_reading()

    def set(self) -> None:    # the cycle's message_event
        if self.listener is not None:
            self.listener.on_request_event()

    def clear(self) -> None:
        """uvicorn clears the event only in ``receive``, which nothing calls here."""

    # ---- the response -----------------------------------------------------------------------

    @property
    def keep_alive(self) -> bool:
        return bool(self.cycle.keep_alive)

    @keep_alive.setter
    def keep_alive(self, value: bool) -> None:
        self.cycle.keep_alive = value

    @property
    def default_headers(self) -> list[tuple[bytes, bytes]]:
        return self.protocol.server_state.default_headers

    @property
    def writing_paused(self) -> bool:
        return bool(self.protocol.flow.write_paused)

    def call_soon(self, callback: Any, *args: Any) -> None:
        self.protocol.loop.call_soon(callback, *args)

    def write(self, data: bytes) -> None:
        self.cycle.response_started = True
        self.protocol.transport.write(data)

    def complete(self) -> None:
        """The response is out: the connection goes on to its next request, or closes."""
        cycle = self.cycle
        self.release()
        if cycle.disconnected:
            return
        cycle.response_complete = True
        if not cycle.keep_alive:
            self.protocol.transport.close()
        cycle.on_response()

    def close(self) -> None:
        """End the connection now (a response cut short)."""
        self.release()
        self.protocol.transport.close()

    def release(self) -> None:
        """Done: the cycle and the protocol point here, and here to the request; left alone,
        every request would be a reference cycle for the cyclic collector."""
        self.listener = None
        self.cycle.message_event = SPENT
        if self.protocol.exchange is self:
            self.protocol.exchange = None


class _SpentEvent:
    """A finished request's message event: what uvicorn still tells it (a hang-up after the
    response, say) concerns nobody."""

    __slots__ = ()

    def set(self) -> None:
        pass

    def clear(self) -> None:
        pass


SPENT = _SpentEvent()


class InferenceProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with TCP_NODELAY on every accepted TCP connection, a bound
    on the request head, the direct path, and hang-ups told at once.

    uvicorn writes a response's head and body in two writes; with Nagle's algorithm on, the
    second waits for the client's delayed ACK (~40 ms) on every keep-alive request. httptools
    itself puts no limit on a request's URL and headers (h11 stops at 64 KiB on the hypercorn
    ports): past MAX_INCOMPLETE bytes the request is answered 431 and the connection closed,
    before any of it reaches the app or a worker. ``direct`` is set per listener (a subclass
    made by ``protocol_for``), never looked up through the app, which uvicorn may wrap (a
    TRACE log level wraps it in its message logger)."""

    direct: DirectPathLike | None = None
    exchange: Exchange | None = None   # the direct path's request in progress
    _head_bytes = 0
    _head_too_large = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        set_nodelay(transport)
        super().connection_made(transport)

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
        if self.exchange is not None and self.exchange.listener is not None:
            self.exchange.listener.on_writing_paused()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.exchange is not None and self.exchange.listener is not None:
            self.exchange.listener.on_writing_resumed()

    def on_message_begin(self) -> None:
        self._head_bytes = 0
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
        """uvicorn's answer to a request the parser gave up on: 431 when it was ours."""
        if not self._head_too_large:
            super().send_400_response(msg)
            return
        body = (b'{"code": 431, "type": "BadRequestException", "message": "Request header '
                b'fields too large (over %d bytes)"}' % MAX_INCOMPLETE)
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                             b"content-type: application/json\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
                             + body)
        self.transport.close()


def protocol_for(direct: DirectPathLike | None) -> type[InferenceProtocol]:
    """The protocol class of one inference listener, serving ``direct``'s requests itself."""
    return type("InferenceProtocol", (InferenceProtocol,), {"direct": direct})


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

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def uvicorn_config(app: Any, direct: DirectPathLike | None, tls: tuple[str, str] | None,
                   backlog: int, keep_alive: int, graceful: float) -> uvicorn.Config:
    """``tls``: the certificate and key files, or None for plain HTTP."""
    certificate, key = tls or (None, None)
    return uvicorn.Config(app, http=protocol_for(direct), loop="none", lifespan="off",
                          ws="none", interface="asgi3", log_config=None, access_log=False,
                          proxy_headers=False, server_header=False, backlog=backlog,
                          timeout_keep_alive=keep_alive,
                          timeout_graceful_shutdown=int(graceful), ssl_certfile=certificate,
                          ssl_keyfile=key)
