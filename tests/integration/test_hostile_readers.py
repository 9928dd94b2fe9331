"""Clients that stop reading what the inference port sends them (response_send_timeout, short
here): a whole answer left untaken, and a stream that holds its worker, on both of the
listener's paths and over gRPC. The daemon drops such a connection, and with it the memory its
answer held (a gRPC stream ends UNAVAILABLE); the worker a stream held goes on, not replaced.
A stream whose worker serves others too is cut off sooner, by max_stream_buffer_size:
test_inference_seam.py."""
from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.support.archives import archive_source
from tests.support.daemon import Daemon, running_daemon
from tests.support.grpc_stubs import channel, generate_stubs, stream_predictions
from tests.support.raw_http import head
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

SEND_TIMEOUT_S = 1.0
PART = 64 * 1024
PARTS = 512        # 32 MiB a stream: far more than the buffers on the way hold
TCP_ESTABLISHED = 1   # tcpi_state, the first byte of Linux's struct tcp_info

# Streams PARTS parts of PART bytes, whatever it is sent (JSON or a form).
STREAMING = f'''
from ts.handler_utils.utils import send_intermediate_predict_response


def handle(data, context):
    if data is None:
        return None
    part = b"p" * {PART}
    for _ in range({PARTS} - 1):
        send_intermediate_predict_response([part], context.request_ids, "", 200, context)
    return [part]
'''


@pytest.fixture(scope="module")
def daemon(archive_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    workdir = tmp_path_factory.mktemp("readers")
    with running_daemon(archive_dir, workdir, {"response_send_timeout": SEND_TIMEOUT_S}) as d:
        archive_source(STREAMING, "streaming", d.model_store, workdir / "src")
        for name in ("echo", "streaming"):
            assert d.register(f"{name}.mar", initial_workers=1).status_code == 200
        yield d


def non_reader(d: Daemon, request: bytes) -> socket.socket:
    """A client that sends ``request`` and then reads nothing (its receive buffer small)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", d.ports["inference"]))
    sock.sendall(request)
    return sock


def daemon_holds(sock: socket.socket) -> bool:
    """Whether the daemon still has its end of ``sock``'s connection, as the client's own
    kernel sees it: the daemon's reset (or close) takes the socket out of ESTABLISHED. Not
    psutil's list of the daemon's connections: that reads /proc/net/tcp, which is not read
    atomically, and once missed the daemon's socket; the client then read the whole answer
    and waited on a connection the daemon kept alive."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)
    return info[0] == TCP_ESTABLISHED


def received_until_closed(sock: socket.socket) -> bytes:
    data = b""
    sock.settimeout(30)
    try:
        while chunk := sock.recv(1 << 20):
            data += chunk
    except ConnectionResetError:   # the daemon dropped it: what it had not sent is gone
        pass
    return data


def test_a_whole_answer_left_untaken_is_dropped_with_its_connection(daemon: Daemon) -> None:
    """Before the limit such a connection held its answer (about 4 MiB here: echo answers
    twice the bytes it is sent) for as long as the client kept it open, after the keep-alive
    timeout too (a close waits for the buffer to flush)."""
    body = b"x" * (2 << 20)
    sock = non_reader(daemon, head("/predictions/echo", "POST",
                                   "Content-Type: application/octet-stream",
                                   f"Content-Length: {len(body)}") + body)
    with sock:
        wait_until(lambda: not daemon_holds(sock), timeout=SEND_TIMEOUT_S + 15,
                   what="the daemon dropping the connection")
        data = received_until_closed(sock)
    assert len(data) < 2 * len(body)   # reset: what its kernel had not handed it is gone
    wait_until(lambda: re.search(r"closed connections held past a limit: \d+ send",
                                 daemon.log()), what="the limit's log line")


def test_a_client_that_reads_slowly_is_not_dropped(daemon: Daemon) -> None:
    """The limit is on taking nothing: a client that reads 16 KiB every 0.3 s of a 4 MiB
    answer takes longer than the limit to bring its buffer below 16 KiB, and keeps its
    connection; then it reads the rest."""
    body = b"x" * (2 << 20)
    sock = non_reader(daemon, head("/predictions/echo", "POST",
                                   "Content-Type: application/octet-stream",
                                   f"Content-Length: {len(body)}") + body)
    received = bytearray()
    slow_until = time.monotonic() + 3 * SEND_TIMEOUT_S

    def read_a_little() -> bool:
        """One of the slow reads, polled every 0.3 s: done once three limits have passed."""
        received.extend(sock.recv(16 * 1024))
        return time.monotonic() >= slow_until

    with sock:
        wait_until(read_a_little, timeout=10 * SEND_TIMEOUT_S, interval=0.3,
                   what="three limits' worth of slow reading")
        assert daemon_holds(sock)
        data = bytes(received)
        length = int(re.search(rb"content-length: (\d+)", data).group(1))
        sock.settimeout(30)
        while len(data) < data.index(b"\r\n\r\n") + 4 + length:
            chunk = sock.recv(1 << 20)
            assert chunk, "the connection closed before the answer's end"
            data += chunk


@pytest.mark.parametrize("path", ["direct", "asgi"])
def test_a_stream_that_holds_its_worker_is_dropped_and_the_worker_goes_on(
        daemon: Daemon, path: str) -> None:
    """Alone in its batch, the stream of a client that stops reading pauses its worker (memory
    bounded); once the client has taken nothing for the limit its connection is dropped, the
    request abandoned as on a hang-up, and the worker finishes: the next request is answered
    by the same worker (before, it waited out response_timeout, then the worker was killed)."""
    worker = daemon.workers("streaming")[0]["pid"]
    form = path == "asgi"   # a form body takes the ASGI path
    body = b"x=1" if form else b"{}"
    kind = "application/x-www-form-urlencoded" if form else "application/json"
    sock = non_reader(daemon, head("/predictions/streaming", "POST", f"Content-Type: {kind}",
                                   f"Content-Length: {len(body)}") + body)
    with sock:
        wait_until(lambda: not daemon_holds(sock), timeout=SEND_TIMEOUT_S + 15,
                   what="the daemon dropping the connection")
        data = received_until_closed(sock)
    assert not data.endswith(b"\r\n0\r\n\r\n")
    answer = daemon.infer("POST", "/predictions/streaming", json={}, timeout=30)
    assert answer.status_code == 200 and len(answer.content) == PARTS * PART
    assert daemon.workers("streaming")[0]["pid"] == worker


def test_a_grpc_stream_that_holds_its_worker_ends_and_the_worker_goes_on(
        daemon: Daemon, tmp_path: Path) -> None:
    """The listener's sweep does not watch gRPC: the job that holds its worker ends the stream
    itself once its reader has taken nothing for the limit."""
    worker = daemon.workers("streaming")[0]["pid"]
    stubs = generate_stubs(tmp_path)
    with channel(daemon.ports["grpc_inference"]) as grpc_channel:
        stream = stream_predictions(stubs, grpc_channel, "streaming", b"{}", timeout=60)
        assert len(next(stream).prediction) == PART
        wait_until(lambda: "took none of it" in daemon.log(), timeout=SEND_TIMEOUT_S + 15,
                   what="the stream cut off")
        answer = daemon.infer("POST", "/predictions/streaming", json={}, timeout=30)
        assert answer.status_code == 200 and len(answer.content) == PARTS * PART
        with pytest.raises(grpc.RpcError) as ended:
            for _ in stream:
                pass
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "its client took none of it for 1 s (response_send_timeout)" \
        in ended.value.details()
    assert daemon.workers("streaming")[0]["pid"] == worker
