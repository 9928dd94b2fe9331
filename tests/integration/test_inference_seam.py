"""The inference port's HTTP/1.1 seam through the real daemon: a client that stops reading a
streamed answer pauses the handler (memory bounded) on both of the listener's paths, or, where
its worker serves others too (continuous batching), is cut off past max_stream_buffer_size and
stalls nobody; SIGTERM drains the requests in flight on both paths, and no logging
configuration turns the direct path off."""
from __future__ import annotations

import re
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import psutil
import pytest
import requests

from tests.support.archives import archive_source
from tests.support.daemon import Daemon
from tests.support.gates import Gate
from tests.support.grpc_stubs import channel as grpc_channel
from tests.support.grpc_stubs import generate_stubs, stream_predictions
from tests.support.ops import file_log_config, make_store
from tests.support.waiting import wait_until

PART = 64 * 1024
PARTS = 4096            # 256 MiB in all: far more than any buffer on the way
BOUND = 48 * 1024 ** 2  # what may sit in buffers (kernel, transport, the job) while paused

# Streams PARTS parts of PART bytes, counting each one sent in a file the test reads.
FIREHOSE = f'''
from pathlib import Path

from ts.handler_utils.utils import send_intermediate_predict_response


def handle(data, context):
    if data is None:
        return None
    progress = Path(context.get_request_header(0, "x-progress"))
    part = b"p" * {PART}
    for n in range({PARTS} - 1):
        send_intermediate_predict_response([part], context.request_ids, "", 200, context)
        progress.write_text(str(n + 1))
    progress.write_text("done")
    return [part]
'''


# Continuous batching: a request asks for k parts of ``size`` bytes (FANOUT_PART unless it
# says), one a step, and shares the running batch with every other request of its worker.
FANOUT_PART = 32 * 1024
FANOUT = f'''
import json

from ts.torch_handler.base_handler import BaseHandler


class Fanout(BaseHandler):
    def initialize(self, context):
        self.context = context
        context.cache = {{}}   # request id -> [k, steps done]
        self.initialized = True

    def preprocess(self, data):
        ids = list(self.context.request_ids.values())
        for gone in [i for i in self.context.cache if i not in ids]:
            del self.context.cache[gone]
        for request_id, row in zip(ids, data):
            if request_id not in self.context.cache:
                body = row.get("body")
                asked = row if row.get("k") else (body if isinstance(body, dict)
                                                  else json.loads(body))
                self.context.cache[request_id] = [int(asked["k"]),
                                                  int(asked.get("size") or {FANOUT_PART}), 0]
        return data

    def inference(self, data, *args, **kwargs):
        parts = []
        for request_id in self.context.request_ids.values():
            state = self.context.cache[request_id]
            state[2] += 1
            parts.append(b"f" * state[1])
        return parts

    def postprocess(self, data):
        self.context.stopping_criteria = [self._done(*self.context.cache[i])
                                          for i in self.context.request_ids.values()]
        return data

    @staticmethod
    def _done(k, size, step):
        return lambda _part: step >= k
'''
FANOUT_CONFIG = "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 8\ncontinuousBatching: true\n" \
                "responseTimeout: 600\n"


@pytest.fixture(scope="module")
def seam(archive_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("seam")
    store = make_store(archive_dir, workdir / "store", ["sleep"])
    archive_source(FIREHOSE, "firehose", store, workdir / "src")
    archive_source(FANOUT, "fanout", store, workdir / "src", FANOUT_CONFIG)
    d = Daemon(workdir, store, {"max_stream_buffer_size": "1M"})
    try:
        d.start()
        assert d.register("firehose.mar", initial_workers=1).status_code == 200
        assert d.register("fanout.mar").status_code == 200
        yield d
    finally:
        d.cleanup()


def paused_streams(d: Daemon, model: str) -> float:
    text = requests.get(d.url("metrics", "/metrics"), timeout=10).text
    found = re.search(r'^torchd_worker_streams_paused\{[^}]*model_name="%s"[^}]*\} (\S+)$'
                      % model, text, re.M)
    return float(found.group(1)) if found else -1.0


def settled(read):
    """A check for wait_until: the value ``read()`` gives twice in a row (non-empty)."""
    last: list = [None]

    def check():
        previous, last[0] = last[0], read()
        return last[0] if last[0] and last[0] == previous else None
    return check


def progress(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def request_bytes(d: Daemon, progress_file: Path, form: bool) -> bytes:
    head = (f"POST /predictions/firehose HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"x-progress: {progress_file}\r\n")
    if form:   # a form body takes the ASGI path
        body = b"x=1"
        head += "Content-Type: application/x-www-form-urlencoded\r\n"
    else:
        body = b"{}"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


@pytest.mark.timeout(180)
@pytest.mark.parametrize("path", ["direct", "asgi"])
def test_a_client_that_stops_reading_pauses_the_handler(seam, tmp_path, path):
    d = seam
    progress_file = tmp_path / "progress"
    daemon = psutil.Process(d.pid)
    rss_before = daemon.memory_info().rss
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.connect(("127.0.0.1", d.ports["inference"]))
    try:
        sock.sendall(request_bytes(d, progress_file, form=path == "asgi"))
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"transfer-encoding: chunked" in head
        # The client reads nothing more: the daemon pauses the worker's connection ...
        wait_until(lambda: paused_streams(d, "firehose") == 1, timeout=60,
                   what="the worker's stream paused")
        # ... and the handler can only fill the buffers on the way: it blocks, its count
        # stands still (done, without the pause, after all of its 256 MiB)
        sent = wait_until(settled(lambda: progress(progress_file)), interval=0.3,
                          what="the handler blocked or done")
        assert sent != "done" and int(sent) * PART <= BOUND, sent
        assert daemon.memory_info().rss - rss_before <= BOUND
        # Reading again resumes it: every part arrives, in one complete chunked body
        received = len(head) - head.index(b"\r\n\r\n") - 4
        sock.settimeout(60)
        tail = b""
        while True:
            data = sock.recv(1 << 20)
            assert data, "the connection closed before the last chunk"
            received += len(data)
            tail = (tail + data)[-16:]
            if tail.endswith(b"\r\n0\r\n\r\n"):
                break
    finally:
        sock.close()
    chunk_overhead = len(b"10000\r\n\r\n")
    assert received == PARTS * (PART + chunk_overhead) + len(b"0\r\n\r\n")
    assert progress(progress_file) == "done"
    wait_until(lambda: paused_streams(d, "firehose") == 0, what="the stream released")


def others_answered(d: Daemon) -> bool:
    """Three clients on the fanout worker are answered in full. Each streams less than
    max_stream_buffer_size in all (400 steps of 1 KiB), so however slowly this busy machine
    lets them read, none of them can fall far enough behind to be cut off."""
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: d.infer("POST", "/predictions/fanout",
                                                  json={"k": 400, "size": 1024}, timeout=60),
                                range(3)))
    return [(a.status_code, len(a.content)) for a in answers] == [(200, 400 * 1024)] * 3


@pytest.mark.timeout(180)
@pytest.mark.parametrize("path", ["direct", "asgi"])
def test_a_client_behind_on_a_shared_worker_is_cut_off_and_stalls_nobody(seam, path):
    """Pausing the worker for the client that stopped reading would stall every request in
    its running batch and every one waiting to join it (until the response timeout, 600 s
    here). The daemon keeps its parts instead, and cuts its stream off past 1M."""
    d = seam
    worker = d.workers("fanout")[0]["pid"]
    cut_before = d.log().count("stream cut off")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.connect(("127.0.0.1", d.ports["inference"]))
    try:
        body = b"k=2000" if path == "asgi" else b'{"k": 2000}'   # 64 MiB
        kind = "application/x-www-form-urlencoded" if path == "asgi" else "application/json"
        sock.sendall(b"POST /predictions/fanout HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
                     % (kind.encode(), len(body), body))
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"transfer-encoding: chunked" in head
        # It reads nothing more. Others join its running batch at once and take more steps
        # than it takes to fill its buffers (about 200): all are answered in full.
        assert others_answered(d)
        wait_until(lambda: d.log().count("stream cut off") > cut_before,
                   what="the stream of the client behind cut off")
        # Its stream ends broken: what the buffers held, then the connection closes without
        # the last chunk.
        sock.settimeout(60)
        received = bytearray(head[head.index(b"\r\n\r\n") + 4:])
        while data := sock.recv(1 << 20):
            received += data
    finally:
        sock.close()
    assert not received.endswith(b"\r\n0\r\n\r\n") and len(received) < 2000 * FANOUT_PART
    assert d.workers("fanout")[0]["pid"] == worker   # no step timed out: the same worker


@pytest.mark.timeout(180)
def test_a_grpc_stream_behind_on_a_shared_worker_ends_unavailable(seam, tmp_path):
    """The same over gRPC's StreamPredictions: the client that reads nothing more gets
    UNAVAILABLE, saying why, and the others are answered."""
    d = seam
    stubs = generate_stubs(tmp_path)
    with grpc_channel(d.ports["grpc_inference"]) as channel:
        stream = stream_predictions(stubs, channel, "fanout", b'{"k": 2000}', timeout=120)
        assert len(next(stream).prediction) == FANOUT_PART
        assert others_answered(d)
        with pytest.raises(grpc.RpcError) as ended:
            for _ in stream:
                pass
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "Stream cut off: its client fell more than 1048576 bytes behind " \
           "(max_stream_buffer_size)" in ended.value.details()


def _gated_request(d: Daemon, gate: Gate, form: bool, out: list) -> None:
    if form:   # a form body takes the ASGI path
        kwargs: dict = {"data": {"gate": str(gate)}}
    else:
        kwargs = {"json": {"gate": str(gate)}}
    try:
        out.append(d.infer("POST", "/predictions/gated", timeout=60, **kwargs))
    except requests.RequestException as exc:
        out.append(exc)


# Waits at the gate its request names (a form field, or a JSON body's key) until the test opens it.
GATED = '''
def handle(data, context):
    if data is None:
        return None
    for row in data:
        gate = row.get("gate") or row.get("body", {}).get("gate")
        with open(gate.decode() if isinstance(gate, (bytes, bytearray)) else gate) as waiting:
            waiting.read()
    return [{"through": True} for _ in data]
'''


@pytest.mark.timeout(180)
def test_sigterm_drains_in_flight_requests_of_both_paths(archive_dir, tmp_path):
    store = make_store(archive_dir, tmp_path / "store", [])
    archive_source(GATED, "gated", store, tmp_path / "src")
    d = Daemon(tmp_path, store)
    answers: list = []
    try:
        d.start()
        assert d.register("gated.mar", initial_workers=2).status_code == 200
        with Gate(tmp_path / "direct") as direct, Gate(tmp_path / "asgi") as asgi:
            clients = [threading.Thread(target=_gated_request, args=(d, gate, form, answers))
                       for gate, form in ((direct, False), (asgi, True))]
            for client in clients:
                client.start()
            # both are in a worker, one each, held at their gates, when the signal comes
            wait_until(lambda: _inflight(d) == 2, timeout=30, what="both requests in workers")
            d.signal(signal.SIGTERM)
            wait_until(lambda: "draining" in d.log(), timeout=30, what="the daemon draining")
            direct.open()
            asgi.open()
            for client in clients:
                client.join(60)
        assert d.proc.wait(60) == 0
    finally:
        d.cleanup()
    assert [getattr(a, "status_code", a) for a in answers] == [200, 200]
    assert all(a.json() == {"through": True} for a in answers)


def _metrics(d: Daemon) -> str:
    return requests.get(d.url("metrics", "/metrics"), timeout=10).text


def _inflight(d: Daemon) -> int:
    found = re.search(r'^torchd_inflight_requests\{[^}]*model_name="gated"[^}]*\} (\S+)$',
                      _metrics(d), re.M)
    return int(float(found.group(1))) if found else 0


@pytest.mark.timeout(120)
def test_trace_logging_leaves_the_direct_path_on(archive_dir, tmp_path):
    """uvicorn wraps the app in its message logger at TRACE level; the direct path must not
    depend on finding itself on the app it was given."""
    log_file = tmp_path / "daemon.log"
    log_config = file_log_config(tmp_path / "logging.json", log_file,
                                 "%(levelname)s %(name)s: %(message)s",
                                 loggers={"uvicorn": 5, "uvicorn.error": 5})
    d = Daemon(tmp_path, make_store(archive_dir, tmp_path / "store", ["echo"]))
    try:
        d.start("--log-config", str(log_config))
        assert d.register("echo.mar", initial_workers=1).status_code == 200
        assert d.infer("POST", "/predictions/echo", data=b"x").status_code == 200
        assert d.infer("GET", "/ping").status_code == 200   # an ASGI route: traced
        wait_until(lambda: re.search(r"ASGI \[\d+\] Started scope=.*'/ping'",
                                     log_file.read_text()),
                   what="uvicorn's trace of the ASGI request")
        # the prediction never went through ASGI
        assert not re.search(r"ASGI \[\d+\] Started scope=.*'/predictions/echo'",
                             log_file.read_text())
    finally:
        d.cleanup()
