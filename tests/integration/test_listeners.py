"""Listener addresses and CORS (SPEC 0, 5.3): `unix:/path` listeners, CORS keys honoured."""
from __future__ import annotations

import http.client
import json
import shutil
import socket
import tempfile

import pytest

from tests.support.waiting import wait_until


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=60)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def call(path: str, method: str, target: str, headers: dict | None = None):
    conn = UnixConnection(path)
    try:
        conn.request(method, target, body=b"x" if method == "POST" else None,
                     headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.fixture
def unix_daemon(make_daemon):
    sockets = tempfile.mkdtemp(prefix="tdl-", dir="/tmp")   # short: AF_UNIX paths are short
    settings = {"inference_address": f"unix:{sockets}/inference.sock",
                "management_address": f"unix:{sockets}/management.sock",
                "cors_allowed_origin": "https://example.com",
                "cors_allowed_methods": "GET, POST", "cors_allowed_headers": "X-Custom"}
    daemon = make_daemon(settings, start=False)
    daemon.start(wait=False)
    daemon.sockets = {"inference": f"{sockets}/inference.sock",
                      "management": f"{sockets}/management.sock"}
    yield daemon
    daemon.cleanup()
    shutil.rmtree(sockets, ignore_errors=True)


def wait_listening(path: str, proc, timeout: float = 60) -> None:
    def answers() -> bool:
        assert proc.poll() is None, "torchd exited"
        try:
            call(path, "GET", "/models")
        except OSError:
            return False
        return True

    wait_until(answers, timeout, 0.1, f"torchd listening on {path}")


def test_unix_socket_listeners_and_cors(unix_daemon):
    d = unix_daemon
    mgmt, inference = d.sockets["management"], d.sockets["inference"]
    wait_listening(mgmt, d.proc)
    status, headers, body = call(mgmt, "POST", "/models?url=noop.mar&initial_workers=1")
    assert status == 200, body
    status, headers, body = call(inference, "POST", "/predictions/noop")
    assert status == 200 and json.loads(body) == {"ok": 1} and "x-request-id" in headers
    status, headers, _ = call(inference, "OPTIONS", "/predictions/noop", {
        "Origin": "https://example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "X-Custom"})
    assert status == 200
    assert headers["access-control-allow-origin"] == "https://example.com"
    assert "POST" in headers["access-control-allow-methods"]
    status, headers, _ = call(inference, "POST", "/predictions/noop",
                              {"Origin": "https://example.com"})
    assert headers["access-control-allow-origin"] == "https://example.com"
    status, headers, _ = call(inference, "OPTIONS", "/predictions/noop", {
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert status == 400 and "access-control-allow-origin" not in headers
