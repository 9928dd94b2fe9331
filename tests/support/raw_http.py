"""HTTP/1.1 spoken by hand over a raw socket, for clients that misbehave on purpose
(tests/integration/test_hostile_*.py): an HTTP library would fix what they send."""
from __future__ import annotations

import json
import socket
import time

from tests.support.daemon import Daemon
from tests.support.layout import torchserve_layout


def connect(d: Daemon, api: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", d.ports[api]), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def answer(sock: socket.socket, within: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes (or ``within`` seconds pass), and when."""
    started, data = time.monotonic(), b""
    sock.settimeout(within)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, socket.timeout, ConnectionResetError):
        pass
    return data, time.monotonic() - started


def status(data: bytes) -> int:
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.") else 0


def error_json(data: bytes) -> dict:
    """The error document of a whole answer, checked to be in TorchServe's layout."""
    body = data.split(b"\r\n\r\n", 1)[1]
    document = json.loads(body)
    assert body == torchserve_layout(document), body
    return document


def head(path: str = "/predictions/echo", method: str = "POST", *extra: str) -> bytes:
    return ("\r\n".join([f"{method} {path} HTTP/1.1", "Host: a", *extra]) + "\r\n\r\n").encode()
