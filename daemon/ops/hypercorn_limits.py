"""The connection limits (daemon/http/limits.py) on the management and metrics listeners, which
hypercorn serves.

hypercorn bounds none of them: its keep-alive timer runs only while no request is in, and stops
when a head completes, so a body that stops holds its connection for ever; ``read_timeout``
would also cut a client waiting quietly for a slow answer (a synchronous register), since
hypercorn keeps reading while the app works. So each connection is served by
``LimitedTCPServer``, hypercorn's own connection class with its read loop given a deadline that
depends on where the request is (h11's public connection states): a head must be complete
within ``request_header_timeout`` of its first byte (a new connection's start), a body must
send something every ``request_body_timeout``; while the app answers there is none. hypercorn
looks the class up in its asyncio runner at each connection, so installing it there
(``install``, idempotent, like the status-line writer in listeners.py) is how it is chosen;
hypercorn has no other user in the daemon. A port's limits are found by its hypercorn Config.

HTTP/2 is refused: TLS offers http/1.1 alone (listeners.hypercorn_config), and a cleartext
connection that turns to HTTP/2 (prior knowledge, or an ``Upgrade: h2c`` request, which
hypercorn would follow) is closed once it does, before its request reaches the app, as
TorchServe's management API speaks HTTP/1.1 only; its requests would be streams of one
connection, which these deadlines cannot time.
"""
from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from ssl import SSLError
from typing import Any

import h11
import hypercorn.asyncio.run as hypercorn_run
from hypercorn.asyncio.tcp_server import MAX_RECV, TCPServer
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed, RawData
from hypercorn.protocol.h11 import (H2CProtocolRequiredError, H2ProtocolAssumedError,
                                    H11Protocol)

from daemon.errors import BadRequest, TorchdError
from daemon.jsonlayout import error_bytes
from daemon.http.limits import (BODY, HEAD, HTTP2_REFUSED, OVER, SILENT, ClosedCount,
                                ConnectionLimits, timeout_answer, too_large_answer,
                                unavailable_answer)


@dataclass
class PortLimits:
    """One hypercorn listener's limits and its open connections."""

    limits: ConnectionLimits
    closed: ClosedCount
    open: int = 0


_PORTS: weakref.WeakKeyDictionary[HypercornConfig, PortLimits] = weakref.WeakKeyDictionary()


def limit(hc: HypercornConfig, name: str, limits: ConnectionLimits) -> None:
    """Serve ``hc``'s listener with ``limits``."""
    install()
    _PORTS[hc] = PortLimits(limits, ClosedCount(name))
    hc.ssl_handshake_timeout = limits.header_timeout


def install() -> None:
    if hypercorn_run.TCPServer is not LimitedTCPServer:
        hypercorn_run.TCPServer = LimitedTCPServer   # type: ignore[misc]


class LimitedTCPServer(TCPServer):
    """One connection, as hypercorn serves it, within its port's limits."""

    async def run(self) -> None:
        port = _PORTS.get(self.config)
        if port is None:
            await super().run()
        elif port.open >= port.limits.max_connections:
            await self._refuse(port)
        else:
            port.open += 1
            try:
                await super().run()
            finally:
                port.open -= 1

    async def _refuse(self, port: PortLimits) -> None:
        """503, once the head is read (closing on unread bytes would reset the connection,
        and the client might never see the answer); a silent client is just closed."""
        try:
            data = await asyncio.wait_for(self.reader.read(MAX_RECV),
                                          port.limits.head_allowance(True))
            if data:
                self.writer.write(unavailable_answer(port.limits))
        except (asyncio.TimeoutError, ConnectionError, OSError, SSLError):
            pass
        port.closed.add(OVER, self.loop)
        self.writer.close()

    async def _read_data(self) -> None:
        """hypercorn's read loop, each read bounded by the deadline of the request's phase."""
        port = _PORTS.get(self.config)
        if port is None:
            await super()._read_data()
            return
        phase = _Phase(port.limits, self.loop.time())
        while not self.reader.at_eof():
            try:
                data = await asyncio.wait_for(self.reader.read(MAX_RECV),
                                              phase.timeout(self._h11(), self.loop.time()))
            except (asyncio.TimeoutError, TimeoutError):
                port.closed.add(self._time_out(phase, port.limits), self.loop)
                break
            except (ConnectionError, OSError, SSLError):
                break
            phase.received(self.loop.time(), bool(data))
            if not await self._handle_as_http1(RawData(data)):
                port.closed.add(HTTP2_REFUSED, self.loop)
                self.writer.close()
                break
            if self._chunk_too_large(port.limits):
                break
        await self.protocol.handle(Closed())
        # The keep-alive timer would hold the connection (its descriptor, its place under
        # max_connections) for up to keep_alive_timeout after the client left: hypercorn
        # stops it only once every task of the connection is done, the timer among them.
        await self.idle_task.stop()

    async def _handle_as_http1(self, event: RawData) -> bool:
        """Hand ``event`` to the connection's HTTP/1.1 protocol; False once the client turns to
        HTTP/2 (its preface, or an ``Upgrade: h2c`` request, which hypercorn has answered 101).
        Not through hypercorn's wrapper: that would switch to HTTP/2 and run the upgrade
        request as stream 1, whose task, once the connection closes, waits for ever on a
        buffer nothing drains, holding a graceful stop for its whole grace period."""
        try:
            await self.protocol.protocol.handle(event)
        except (H2CProtocolRequiredError, H2ProtocolAssumedError):
            return False
        return True

    def _h11(self) -> h11.Connection | None:
        protocol = self.protocol.protocol
        if isinstance(protocol, H11Protocol) and isinstance(protocol.connection,
                                                             h11.Connection):
            return protocol.connection
        return None   # HTTP/2, or a websocket

    def _time_out(self, phase: _Phase, limits: ConnectionLimits) -> str:
        """Answer 408 where nothing of the response went out yet, then close."""
        connection = self._h11()
        if phase.what == HEAD and not phase.any_byte:
            reason = SILENT
        elif phase.what == HEAD or (connection is not None
                                    and connection.our_state is h11.SEND_RESPONSE):
            reason = HEAD if phase.what == HEAD else BODY
            self.writer.write(timeout_answer(reason, limits))
        else:
            reason = BODY
        self.writer.close()
        return reason

    def _chunk_too_large(self, limits: ConnectionLimits) -> bool:
        """413 at once for a chunk declaring more than a body may hold. h11 tells no chunk's
        size in its events; its chunked reader holds what is left of the current one
        (``_bytes_in_chunk``, read defensively: absent, nothing is refused early and the app's
        own limit refuses the body once it is that large)."""
        connection = self._h11()
        if connection is None or connection.their_state is not h11.SEND_BODY:
            return False
        left = getattr(getattr(connection, "_reader", None), "_bytes_in_chunk", 0)
        if not isinstance(left, int) or left <= limits.max_body:
            return False
        if connection.our_state is h11.SEND_RESPONSE:
            self.writer.write(too_large_answer(limits))
        self.writer.close()
        return True


class _Phase:
    """Where a connection's current request is, and the deadline that comes with it."""

    __slots__ = ("limits", "what", "since", "any_byte")

    def __init__(self, limits: ConnectionLimits, opened: float) -> None:
        self.limits = limits
        self.what: str | None = HEAD   # a new connection owes its first head
        self.since = opened
        self.any_byte = False

    def received(self, now: float, data: bool) -> None:
        if data and self.what == BODY:
            self.since = now          # the body moved
        self.any_byte = self.any_byte or data

    def timeout(self, connection: h11.Connection | None, now: float) -> float | None:
        """Seconds the next read may wait; None: no limit (the app's turn, or HTTP/2)."""
        self._follow(connection, now)
        if self.what is None:
            return None
        allowed = self.limits.header_timeout if self.what == HEAD else self.limits.body_timeout
        return max(0.0, self.since + allowed - now)

    def _follow(self, connection: h11.Connection | None, now: float) -> None:
        state = connection.their_state if connection is not None else None
        if state is h11.IDLE:
            assert connection is not None
            if connection.trailing_data[0]:
                if self.what != HEAD:               # a new head's first bytes are in
                    self.what, self.since = HEAD, now
            elif self.any_byte:
                self.what = None                    # between requests: keep-alive's timer
        elif state is h11.SEND_BODY:
            if self.what != BODY:
                self.what, self.since = BODY, now
        else:
            self.what = None                        # the app's turn, or HTTP/2


class HeadGuard:
    """ASGI middleware for what h11 lets through and the inference port's parser does not, each
    answered as that port answers it, with the connection closed after:

    - a head past ``max_head`` bytes that arrived whole (h11 bounds a head only while it is
      incomplete, so one that comes in one or two reads passes): 431;
    - a request framed by both Content-Length and Transfer-Encoding (h11 follows the
      Transfer-Encoding, as RFC 9112 lets it, and keeps the connection; a proxy in front that
      followed the Content-Length would see another request inside the body): 400.
    """

    def __init__(self, app: Any, max_head: int) -> None:
        self.app = app
        self.max_head = max_head

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        refusal = self._refusal(scope) if scope["type"] == "http" else None
        if refusal is None:
            await self.app(scope, receive, send)
            return
        body = error_bytes(refusal.status, refusal.type, refusal.message)
        await send({"type": "http.response.start", "status": refusal.status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", b"%d" % len(body)),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    def _refusal(self, scope: dict) -> TorchdError | None:
        headers = scope["headers"]
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        framing = set()
        for name, value in headers:
            size += len(name) + len(value) + 4
            if name in (b"content-length", b"transfer-encoding"):
                framing.add(name)
        if size > self.max_head:
            return TorchdError(f"Request header fields too large (over {self.max_head} bytes)",
                               status=431)
        if len(framing) == 2:
            return BadRequest("A request may not have both Content-Length and "
                              "Transfer-Encoding")
        return None
