"""The three HTTP listeners: sockets bound early, then served until shutdown.

The inference port is the hot path and is served by uvicorn with the httptools parser (C):
hypercorn + h11 cost ~350-430 us of CPU per request on a 2-core machine, uvicorn + httptools
~75 us. The management and metrics ports keep hypercorn, the design card's server, where a
request's cost does not matter. Both run on the daemon's own uvloop; neither installs signal
handlers (the daemon owns SIGTERM) and both drain in-flight requests when closed.
"""
from __future__ import annotations

import asyncio
import http
import logging
import socket
import stat
from pathlib import Path
from typing import Any

import h11
from h11._writers import WRITERS
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig

from daemon.config.settings import Config
from daemon.config.values import BindAddress
from daemon.http.limits import ConnectionLimits
from daemon.http.uvicorn_adapter import MAX_INCOMPLETE, InferenceServer, uvicorn_config
from daemon.ops import hypercorn_limits
from daemon.osutil import connections_allowed, open_files_limit

logger = logging.getLogger(__name__)
GRACEFUL_HTTP = 30.0      # seconds in-flight HTTP requests get at shutdown
LISTEN_BACKLOG = 1024
KEEP_ALIVE = 75           # seconds an idle keep-alive connection stays open
INFERENCE = "inference"


class ListenerError(Exception):
    """A listener cannot bind its address; the message names the listener and the address."""


def bind_listener(name: str, address: BindAddress) -> socket.socket:
    """A bound socket that does not listen yet: a busy port fails the start before any model
    loads, and until ``listen()`` clients are refused rather than left hanging."""
    try:
        sockaddr: Any
        if address.is_unix:
            _remove_stale_socket(Path(str(address.path)))
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


def connection_limits(config: Config) -> ConnectionLimits:
    """Every HTTP listener's limits. ``max_connections`` is lowered, saying so, when that many
    on each listener (gRPC's too) would leave the daemon without descriptors."""
    listeners = len(config.listeners) + len(config.grpc_listeners)
    allowed = connections_allowed(config.max_connections, listeners)
    if allowed < config.max_connections:
        explicit = config.sources.get("max_connections", "default") != "default"
        logger.log(logging.WARNING if explicit else logging.INFO,
                   "max_connections lowered from %d to %d per listener: the process may open "
                   "%d files (RLIMIT_NOFILE), %d listeners share them", config.max_connections,
                   allowed, open_files_limit(), listeners)
    return ConnectionLimits(header_timeout=config.request_header_timeout,
                            body_timeout=config.request_body_timeout,
                            send_timeout=config.response_send_timeout,
                            max_connections=allowed, max_body=config.max_request_size)


def hypercorn_config(sock: socket.socket, address: BindAddress, config: Config,
                     name: str = "", limits: ConnectionLimits | None = None) -> HypercornConfig:
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
    # HTTP/1.1 only over TLS: the limits time HTTP/1.1's requests (daemon/ops/hypercorn_limits.py)
    hc.alpn_protocols = ["http/1.1"]
    hypercorn_limits.limit(hc, name, limits or ConnectionLimits())
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
        self.limits = ConnectionLimits()

    def serve(self) -> list[asyncio.Future]:
        servers: list[asyncio.Future] = []
        self.limits = connection_limits(self.config)
        for name, address in self.config.listeners.items():
            sock, app = self.sockets[name], self.apps[name]
            if name == INFERENCE:
                # Listening from here on, before serve() returns: READY=1 follows at once, and a
                # client connecting then must be queued, not refused.
                sock.listen(LISTEN_BACKLOG)
                servers.append(asyncio.ensure_future(self._serve_uvicorn(app, sock, address)))
            else:
                hc = hypercorn_config(sock, address, self.config, name, self.limits)
                guarded: Any = hypercorn_limits.HeadGuard(app, MAX_INCOMPLETE)
                servers.append(asyncio.ensure_future(
                    hypercorn_serve(guarded, hc, shutdown_trigger=self._closed.wait)))
        return servers

    async def _serve_uvicorn(self, app: Any, sock: socket.socket, address: BindAddress) -> None:
        tls = None
        if address.is_tls:
            tls = (str(self.config.certificate_file), str(self.config.private_key_file))
        # the inference app's DirectPath, taken here: uvicorn may wrap the app (TRACE logging)
        direct = getattr(app, "direct", None)
        self._inference = InferenceServer(uvicorn_config(app, direct, tls, LISTEN_BACKLOG,
                                                         KEEP_ALIVE, GRACEFUL_HTTP,
                                                         self.limits), INFERENCE)
        if self._closed.is_set():
            self._inference.should_exit = True
        await self._inference.serve(sockets=[sock])

    def close(self) -> None:
        """Stop accepting; let in-flight requests finish."""
        self._closed.set()
        if self._inference is not None:
            self._inference.should_exit = True
