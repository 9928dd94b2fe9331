"""The three HTTP listeners: sockets bound early, then served until shutdown.

The inference port is the hot path and is served by uvicorn with the httptools parser (C):
hypercorn + h11 cost ~350-430 us of CPU per request on a 2-core machine, uvicorn + httptools
~75 us. The management and metrics ports keep hypercorn, the design card's server, where a
request's cost does not matter. Both run on the daemon's own uvloop; neither installs signal
handlers (the daemon owns SIGTERM) and both drain in-flight requests when closed.
"""
from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import socket
import stat
from pathlib import Path
from typing import Any

import h11
import uvicorn
from h11._writers import WRITERS
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from daemon.config.settings import Config
from daemon.config.values import BindAddress
from daemon.http.common import DISCONNECT_HOOKS

logger = logging.getLogger(__name__)
GRACEFUL_HTTP = 30.0      # seconds in-flight HTTP requests get at shutdown
LISTEN_BACKLOG = 1024
KEEP_ALIVE = 75           # seconds an idle keep-alive connection stays open
MAX_INCOMPLETE = 64 * 1024   # bytes of request head a listener takes before it gives up
INFERENCE = "inference"


class ListenerError(Exception):
    """A listener cannot bind its address; the message names the listener and the address."""


def bind_listener(name: str, address: BindAddress) -> socket.socket:
    """A bound socket that does not listen yet: a busy port fails the start before any model
    loads, and until ``listen()`` clients are refused rather than left hanging."""
    try:
        if address.is_unix:
            _remove_stale_socket(Path(address.path))
            family, sockaddr = socket.AF_UNIX, str(address.path)
        else:
            family, _, _, _, sockaddr = socket.getaddrinfo(
                address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise ListenerError(f"{name} API cannot listen on {address.url}: "
                            f"{exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family != socket.AF_UNIX:   # accepted connections inherit it (hypercorn's ports)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(sockaddr)
    except OSError as exc:
        sock.close()
        raise ListenerError(f"{name} API cannot listen on {address.url}: "
                            f"{exc.strerror or exc}") from None
    return sock


def _remove_stale_socket(path: Path) -> None:
    """A socket file left by a daemon that died; anything else there is not ours to delete."""
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass


def bind_listeners(config: Config) -> dict[str, socket.socket]:
    sockets: dict[str, socket.socket] = {}
    try:
        for name, address in config.listeners.items():
            sockets[name] = bind_listener(name, address)
    except ListenerError:
        for sock in sockets.values():
            sock.close()
        raise
    return sockets


class NoDelayHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with TCP_NODELAY on every accepted TCP connection, and a
    bound on the request head.

    uvicorn writes a response's head and body in two writes; with Nagle's algorithm on, the
    second waits for the client's delayed ACK (~40 ms) on every keep-alive request. The event
    loop usually sets it already; this makes it torchd's guarantee, not the loop's habit.
    httptools itself puts no limit on a request's URL and headers (h11 stopped at 64 KiB on
    the hypercorn ports): past MAX_INCOMPLETE bytes the request is answered 431 and the
    connection closed, before any of it reaches the app or a worker."""

    _head_bytes = 0
    _head_too_large = False
    direct: Any = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        set_nodelay(transport)
        super().connection_made(transport)
        self.direct = getattr(self.app, "direct", None)   # the inference app's DirectPath

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        """A prediction request takes the direct path (daemon/http/direct.py) unless it is
        one the ASGI app must serve (or uvicorn answers it with its own app, a 503)."""
        if self.direct is not None and app is self.app and self.direct.take(self, cycle):
            return
        # The list is shared by every copy of the scope the app makes; see connection_lost.
        cycle.scope[DISCONNECT_HOOKS] = []
        cycle.transport = HeadWithBody(self.transport)
        super()._start_asgi_task(cycle, app)

    def connection_lost(self, exc: Exception | None) -> None:
        """Tells the request in progress at once, by its hooks: a task per request awaiting
        ``receive()`` for the disconnect would cost more than the rest of its routing."""
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and not cycle.response_complete:
            for hook in cycle.scope.get(DISCONNECT_HOOKS, ()):
                hook()

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


class HeadWithBody:
    """A request cycle's view of its connection: the response head is held and goes out in one
    write with the first part of the body.

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
    closes the listener itself (``should_exit``), then uvicorn drains in-flight requests."""

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def uvicorn_config(app: Any, address: BindAddress, config: Config) -> uvicorn.Config:
    tls: dict[str, Any] = {}
    if address.is_tls:
        tls = {"ssl_certfile": str(config.certificate_file),
               "ssl_keyfile": str(config.private_key_file)}
    return uvicorn.Config(app, http=NoDelayHttpTools, loop="none", lifespan="off", ws="none",
                          interface="asgi3", log_config=None, access_log=False,
                          proxy_headers=False, server_header=False, backlog=LISTEN_BACKLOG,
                          timeout_keep_alive=KEEP_ALIVE,
                          timeout_graceful_shutdown=int(GRACEFUL_HTTP), **tls)


_STANDARD_PHRASES = {status.value: status.phrase.encode() for status in http.HTTPStatus}


def _with_standard_reason(write: Any) -> Any:
    """h11's status-line writer, filling in the standard phrase: ASGI carries none, and
    hypercorn hands h11 none, so its status lines would read "HTTP/1.1 200 " otherwise."""
    def write_response(response: Any, out: Any) -> None:
        if not response.reason:
            # h11 events are frozen, but hypercorn built this one for this single write
            object.__setattr__(response, "reason", _STANDARD_PHRASES.get(response.status_code,
                                                                       b""))
        write(response, out)

    write_response.torchd_reason = True   # type: ignore[attr-defined]
    return write_response


def install_standard_reasons() -> None:
    """Idempotent; h11's only user in the daemon is hypercorn (management and metrics)."""
    for key in ((h11.SERVER, h11.IDLE), (h11.SERVER, h11.SEND_RESPONSE)):
        if not getattr(WRITERS[key], "torchd_reason", False):
            WRITERS[key] = _with_standard_reason(WRITERS[key])


def hypercorn_config(sock: socket.socket, address: BindAddress,
                     config: Config) -> HypercornConfig:
    """Serve on ``sock``, which listens from here on (hypercorn takes over its descriptor)."""
    install_standard_reasons()
    sock.listen(LISTEN_BACKLOG)
    hc = HypercornConfig()
    hc.bind = [f"fd://{sock.detach()}"]
    hc.backlog = LISTEN_BACKLOG
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.graceful_timeout = GRACEFUL_HTTP
    hc.keep_alive_timeout = KEEP_ALIVE
    hc.h11_max_incomplete_size = MAX_INCOMPLETE
    if address.is_tls:
        hc.certfile = str(config.certificate_file)
        hc.keyfile = str(config.private_key_file)
    return hc


class Listeners:
    """Serves each bound socket with its app until ``close``; then in-flight requests finish
    (up to GRACEFUL_HTTP seconds) and ``serve``'s futures end."""

    def __init__(self, config: Config, sockets: dict[str, socket.socket],
                 apps: dict[str, Any]) -> None:
        self.config = config
        self.sockets = sockets
        self.apps = apps
        self._closed = asyncio.Event()
        self._inference: InferenceServer | None = None

    def serve(self) -> list[asyncio.Future]:
        servers = []
        for name, address in self.config.listeners.items():
            sock, app = self.sockets[name], self.apps[name]
            if name == INFERENCE:
                # Listening from here on, before serve() returns: READY=1 follows at once, and a
                # client connecting then must be queued, not refused.
                sock.listen(LISTEN_BACKLOG)
                servers.append(asyncio.ensure_future(self._serve_uvicorn(app, sock, address)))
            else:
                hc = hypercorn_config(sock, address, self.config)
                servers.append(asyncio.ensure_future(
                    hypercorn_serve(app, hc, shutdown_trigger=self._closed.wait)))
        return servers

    async def _serve_uvicorn(self, app: Any, sock: socket.socket, address: BindAddress) -> None:
        self._inference = InferenceServer(uvicorn_config(app, address, self.config))
        if self._closed.is_set():
            self._inference.should_exit = True
        await self._inference.serve(sockets=[sock])

    def close(self) -> None:
        """Stop accepting; let in-flight requests finish."""
        self._closed.set()
        if self._inference is not None:
            self._inference.should_exit = True
