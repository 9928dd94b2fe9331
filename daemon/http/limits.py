"""What one client may hold on an HTTP listener: time for a request's head and for each stretch
of its body, and a share of the listener's connections.

Shared by the inference listener (daemon/http/uvicorn_adapter.py) and the management and metrics
listeners (daemon/ops/hypercorn_limits.py); no HTTP library is imported here. Neither server
bounds these by itself: uvicorn's only timer is keep-alive (a head sent a byte at a time, or a
chunked body that stops, holds its connection for ever), hypercorn's keep-alive timer stops once
a request's head is in, and neither caps the number of connections.

The answers are TorchServe's error JSON, written by the listener itself and followed by a close:
a stalled head gets 408 (a new connection that sent nothing is closed without a word, as an idle
keep-alive one is), a stalled body 408 unless its response has begun (then the connection just
closes), a chunk declaring more than ``max_request_size`` 413 at once, and a connection past
``max_connections`` 503.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from daemon.errors import PayloadTooLarge, RequestTimeout, ServiceUnavailable, TorchdError
from daemon.jsonlayout import error_bytes

logger = logging.getLogger(__name__)

HEAD = "head"          # what a connection was closed for: its request head did not arrive
BODY = "body"          # its body stopped
SEND = "send"          # its client stopped taking its response
SILENT = "silent"      # a new connection sent nothing at all
OVER = "over"          # past max_connections
HTTP2_REFUSED = "http/2"   # it turned to HTTP/2 on a port that speaks HTTP/1.1 only
# Seconds a connection past max_connections may take to send the head its 503 answers: long
# enough for a client that sends at once, short enough that such connections hold few
# descriptors.
OVER_LIMIT_GRACE = 1.0


@dataclass(frozen=True)
class ConnectionLimits:
    """One listener's limits (config: request_header_timeout, request_body_timeout,
    response_send_timeout, max_connections, max_request_size). ``send_timeout`` is the inference
    listener's alone: hypercorn's ports answer small documents."""

    header_timeout: float = 60.0
    body_timeout: float = 60.0
    send_timeout: float = 60.0
    max_connections: int = 10000
    max_body: int = 6553500

    @property
    def sweep_interval(self) -> float:
        """Seconds between two checks of the open connections: a quarter of the shortest limit
        (so one is enforced within 25% of itself), at least 0.1 s and at most 1 s."""
        shortest = min(self.header_timeout, self.body_timeout, self.send_timeout)
        return min(1.0, max(0.1, shortest / 4))

    def head_allowance(self, over_limit: bool) -> float:
        return min(OVER_LIMIT_GRACE, self.header_timeout) if over_limit else self.header_timeout


def _http_error(error: TorchdError, status_line: bytes) -> bytes:
    body = error_bytes(error.status, error.type, error.message)
    return (status_line + b"content-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body)


def timeout_answer(phase: str, limits: ConnectionLimits) -> bytes:
    """408 with TorchServe's error JSON, naming the limit that passed."""
    if phase == HEAD:
        text = (f"Request head not received within {limits.header_timeout:g} s "
                "(request_header_timeout)")
    else:
        text = (f"Request body sent nothing for {limits.body_timeout:g} s "
                "(request_body_timeout)")
    return _http_error(RequestTimeout(text, status=408), b"HTTP/1.1 408 Request Timeout\r\n")


def too_large_answer(limits: ConnectionLimits) -> bytes:
    """413 for a chunk that declares more than the whole body may hold."""
    error = PayloadTooLarge(f"Request body exceeds max_request_size ({limits.max_body} bytes)")
    return _http_error(error, b"HTTP/1.1 413 Payload Too Large\r\n")


def unavailable_answer(limits: ConnectionLimits) -> bytes:
    error = ServiceUnavailable(f"Too many open connections (max_connections="
                               f"{limits.max_connections})")
    return _http_error(error, b"HTTP/1.1 503 Service Unavailable\r\n")


def chunk_size_before(data: bytes, end: int) -> int | None:
    """The size a chunk-size line ending at ``data[end]`` (its CRLF just before) declares, or
    None when there is no such line. Only the line's tail may be in ``data`` (the rest came
    in an earlier read): its digits then give a smaller number, never a larger one, so a
    refusal on it is never wrong."""
    if end < 2 or data[end - 2:end] != b"\r\n":
        return None
    start = data.rfind(b"\r\n", 0, end - 2)
    line = data[start + 2 if start >= 0 else 0:end - 2]
    digits = line.split(b";", 1)[0].strip(b" \t")
    try:
        return int(digits, 16) if digits else None
    except ValueError:
        return None


class ClosedCount:
    """Connections a listener closed for a limit, logged as one line a second at most (an
    attack must not turn into a log line per connection)."""

    def __init__(self, listener: str) -> None:
        self.listener = listener
        self.counts: dict[str, int] = {}
        self._flush_due = False

    def add(self, reason: str | None, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Count one; with ``loop``, the line is logged a second later (with whatever else
        came meanwhile); without, ``flush`` logs it."""
        if reason is None:
            return
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if loop is not None and not self._flush_due:
            self._flush_due = True
            loop.call_later(1.0, self.flush)

    def flush(self) -> None:
        self._flush_due = False
        if self.counts:
            summary = ", ".join(f"{count} {reason}" for reason, count in sorted(
                self.counts.items()))
            logger.warning("%s listener closed connections held past a limit: %s",
                           self.listener, summary)
            self.counts = {}
