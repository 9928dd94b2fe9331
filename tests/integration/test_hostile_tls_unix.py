"""Hostile clients on the TLS and unix listeners (issue 28): the header and body time limits
hold there too, and a TLS connection that never sends its ClientHello is closed."""
from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon
from tests.support.raw_http import answer, connect, head, status
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(90)

LIMIT_S = 1.0                 # request_header_timeout and request_body_timeout


@pytest.fixture(scope="module")
def tls_unix(archive_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """Inference and metrics over TLS (uvicorn's and hypercorn's), management on a unix
    socket. Killed at the end: a graceful stop waits for TLS connections (README)."""
    from tests.support.tls import self_signed

    workdir = tmp_path_factory.mktemp("hostile-tls")
    cert, key = self_signed(workdir)
    store = workdir / "store"
    store.mkdir()
    daemon = Daemon(workdir, store, {
        "request_header_timeout": LIMIT_S, "request_body_timeout": LIMIT_S,
        "certificate_file": str(cert), "private_key_file": str(key)})
    for api in ("inference", "metrics"):
        daemon.settings[f"{api}_address"] = f"https://127.0.0.1:{daemon.ports[api]}"
    daemon.settings["management_address"] = f"unix:{workdir / 'management.sock'}"
    try:
        daemon.start(wait=False)
        wait_until(lambda: _tls_answers(daemon, "inference", "/ping"), 60, 0.1,
                   lambda: f"the TLS listeners\n{daemon.log(5000)}")
        yield daemon
    finally:
        daemon.track_descendants()
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()
        daemon.cleanup()


def _tls(d: Daemon, api: str) -> ssl.SSLSocket:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context.wrap_socket(connect(d, api))


def _tls_answers(d: Daemon, api: str, path: str) -> bool:
    try:
        with _tls(d, api) as sock:
            sock.sendall(head(path, "GET", "Connection: close"))
            return status(answer(sock, 5)[0]) == 200
    except OSError:
        return False


@pytest.mark.parametrize("api", ("inference", "metrics"))
def test_tls_listeners_time_out_heads_and_handshakes(tls_unix: Daemon, api: str) -> None:
    with _tls(tls_unix, api) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: a\r\n")
        data, took = answer(sock, LIMIT_S + 5)
    assert status(data) == 408 and took < LIMIT_S + 2, data
    with connect(tls_unix, api) as sock:   # no ClientHello ever
        data, took = answer(sock, LIMIT_S + 5)
    assert data == b"" and took < LIMIT_S + 2


def test_a_unix_listener_times_out_a_stalled_body(tls_unix: Daemon) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(tls_unix.settings["management_address"][len("unix:"):])
        sock.sendall(head("/models?url=noop.mar", "POST", "Content-Type: application/json",
                          "Content-Length: 10") + b"{")
        data, took = answer(sock, LIMIT_S + 5)
    assert status(data) == 408 and took < LIMIT_S + 2, data
