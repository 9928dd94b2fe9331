"""Inference under trouble, with real workers (SPEC 2): a full queue, response timeouts, a worker
killed mid-request, clients that hang up while queued, and health that tells the truth."""
from __future__ import annotations

import concurrent.futures
import json
import contextlib
import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest
import requests

from daemon.osutil import pid_gone as gone
from tests.support.archives import archive_source, copy_store
from tests.support.daemon import Daemon
from tests.support.gates import Gate
from tests.support.ops import sample_sum, scrape
from tests.support.supervision import taken, wait_taken
from tests.support.waiting import wait_until

QUEUE = 3

# Appends its request's X-Tag to the file named by X-Log when the request reaches the handler,
# then waits at the gate named by X-Gate (tests/support/gates.py) until the test opens it, then
# sleeps X-Sleep seconds: which requests ran, and in what order.
TRACE = '''
import time


def handle(data, context):
    if data is None:
        return None
    for idx in range(len(data)):
        log = context.get_request_header(idx, "x-log")
        if log:
            with open(log, "a") as f:
                f.write(context.get_request_header(idx, "x-tag") + "\\n")
    for idx in range(len(data)):
        gate = context.get_request_header(idx, "x-gate")
        if gate:
            with open(gate) as waiting:   # a FIFO: until the test opens the gate
                waiting.read()
    time.sleep(max(float(context.get_request_header(i, "x-sleep") or 0)
                   for i in range(len(data))))
    return ["done" for _ in data]
'''

# Loads at once, unless the gate LOAD_GATE (in the daemon's workdir) exists: then its load
# waits there, so a scale-up stays below minWorkers for as long as the test looks.
LOAD_GATE = "load-gate"
GATED_LOAD = '''
import os

GATE = {gate!r}


def handle(data, context):
    if data is None:
        if os.path.exists(GATE):
            with open(GATE) as waiting:   # a FIFO: until the test opens the gate
                waiting.read()
        return None
    return ["loaded" for _ in data]
'''


CRASHER = '''
import os
import signal


def handle(data, context):
    if data is None:
        return None
    os.kill(os.getpid(), signal.SIGKILL)   # every call takes its worker down
'''


@pytest.fixture(scope="module")
def daemon(archive_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("inference-faults")
    store = copy_store(archive_dir, workdir / "store")
    archive_source(TRACE, "trace", store, workdir / "src")
    archive_source(GATED_LOAD.format(gate=str(workdir / LOAD_GATE)), "gated_load", store,
                   workdir / "src")
    archive_source(CRASHER, "crasher", store, workdir / "src")
    # "victim" opts out of re-dispatch (the per-model key, through the models JSON)
    opted_out = {"victim": {"1.0": {"redispatchOnWorkerDeath": False}}}
    d = Daemon(workdir, store, {"job_queue_size": QUEUE, "models": json.dumps(opted_out)})
    d.start()
    yield d
    d.cleanup()


@pytest.fixture
def model(daemon: Daemon):
    """Register an archive under a name for one test; unregistered afterwards."""
    names = []

    def register(url: str, name: str, **params) -> str:
        r = daemon.register(url, model_name=name, **params)
        assert r.status_code in (200, 202), r.text
        names.append(name)
        return name

    yield register
    for name in names:
        daemon.unregister(name)


def timed_post(d: Daemon, path: str, **kwargs) -> tuple[float, requests.Response]:
    started = time.monotonic()
    response = d.infer("POST", path, timeout=60, **kwargs)
    return time.monotonic() - started, response


def only_pid(d: Daemon, name: str) -> int:
    return d.wait_workers(name, 1)[0]["pid"]


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def pending(d: Daemon, name: str) -> int:
    return d.describe(name)[0]["jobQueueStatus"]["pendingRequests"]


def traced(d: Daemon, name: str, log: Path):
    """POST to a trace model: the handler logs ``tag`` when the request reaches it, then waits
    at ``gate`` (if any) until the test opens it."""
    def post(tag: str, sleep: float = 0, gate: Gate | None = None,
             ) -> tuple[float, requests.Response]:
        headers = {"X-Log": str(log), "X-Tag": tag, "X-Sleep": str(sleep)}
        if gate is not None:
            headers["X-Gate"] = str(gate)
        return timed_post(d, f"/predictions/{name}", headers=headers)
    return post


def counter(d: Daemon, metric: str, name: str) -> float:
    return sample_sum(scrape(d), metric, model_name=name, model_version="1.0")


# ---- backpressure -------------------------------------------------------------------------

def test_full_queue_answers_503_at_once(daemon, model, tmp_path):
    """One request in the worker + job_queue_size (3) waiting are served; the rest get 503 at
    once. The queue counts waiting requests, not the batch the worker holds."""
    name = model("trace.mar", "qfull", initial_workers=1)
    log = tmp_path / "seen.log"
    post = traced(daemon, name, log)
    with concurrent.futures.ThreadPoolExecutor(8) as pool, Gate(tmp_path / "gate") as gate:
        first = pool.submit(post, "first", gate=gate)
        wait_until(lambda: lines(log) == ["first"], what="first in the worker")   # held there
        rest = [pool.submit(post, f"r{i}") for i in range(7)]
        wait_until(lambda: sum(f.done() for f in rest) >= 4, what="4 answered at once")
        queued = daemon.describe(name)[0]["jobQueueStatus"]
        # the worker is held: exactly the refused ones are answered, the queued ones wait
        assert sum(f.done() for f in rest) == 4 and not first.done()
        gate.open()
        answers = [first.result()] + [f.result() for f in rest]
    assert queued == {"remainingCapacity": 0, "pendingRequests": QUEUE}
    ok = [(t, r) for t, r in answers if r.status_code == 200]
    full = [(t, r) for t, r in answers if r.status_code != 200]
    assert len(ok) == 1 + QUEUE and len(full) == 4, [r.status_code for _, r in answers]
    for elapsed, r in full:
        assert r.status_code == 503 and elapsed < 0.9, (r.status_code, elapsed)
        assert r.headers["retry-after"] == "1"
        assert r.json() == {"code": 503, "type": "ServiceUnavailableException",
                            "message": f'Model "{name}" job queue is full'}
    assert len(lines(log)) == 1 + QUEUE


# ---- response timeout ---------------------------------------------------------------------

def test_response_timeout_is_504_and_the_worker_is_replaced(daemon, model):
    name = model("sleep.mar", "slowpoke", initial_workers=1, response_timeout=2)
    old = only_pid(daemon, name)
    elapsed, r = timed_post(daemon, f"/predictions/{name}", json={"sleep": 5})
    assert r.status_code == 504 and 1.9 < elapsed < 3.5, (r.status_code, elapsed)
    assert r.json() == {"code": 504, "type": "RequestTimeoutException",
                        "message": f'Model "{name}" version 1.0 did not answer within 2 s '
                                   '(response_timeout)'}
    elapsed, again = timed_post(daemon, f"/predictions/{name}", json={"sleep": 0})
    assert again.status_code == 200 and again.json() == {"slept": 0.0}
    assert elapsed < 2.0, elapsed    # the replacement starts at once
    assert only_pid(daemon, name) != old and gone(old)


# ---- worker crash -------------------------------------------------------------------------

def test_worker_killed_mid_request_fails_that_request_at_once(daemon, model, tmp_path):
    """With re-dispatch off for the model, a kill fails exactly the killed batch's requests."""
    name = model("trace.mar", "victim", initial_workers=1)
    old = only_pid(daemon, name)
    log = tmp_path / "seen.log"
    post = traced(daemon, name, log)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        busy = pool.submit(post, "busy", 10)
        wait_until(lambda: lines(log) == ["busy"], what="busy in the worker")
        queued = [pool.submit(post, f"q{i}") for i in range(2)]
        wait_until(lambda: pending(daemon, name) == 2, what="2 queued")
        killed_at = time.monotonic()
        os.kill(old, signal.SIGKILL)
        _, r = busy.result()
        answered_after = time.monotonic() - killed_at
        others = [f.result()[1] for f in queued]
    assert r.status_code == 500 and answered_after < 1.0, (r.status_code, answered_after)
    assert r.json() == {"code": 500, "type": "InternalServerException",
                        "message": "Worker died."}
    assert [o.status_code for o in others] == [200, 200]   # served by the replacement
    assert sorted(lines(log)) == ["busy", "q0", "q1"]
    new = only_pid(daemon, name)
    assert new != old and gone(old)
    assert post("after")[1].status_code == 200


# ---- client disconnect --------------------------------------------------------------------

@contextlib.contextmanager
def hanging_up(d: Daemon, path: str, headers: dict[str, str]):
    """POST a request; leaving the block closes the connection without reading the answer."""
    port = d.ports["inference"]
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Length: 0",
            *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        yield


def test_a_client_that_hangs_up_while_queued_is_never_run(daemon, model, tmp_path):
    name = model("trace.mar", "hangup", initial_workers=1)
    log = tmp_path / "seen.log"
    post = traced(daemon, name, log)
    with concurrent.futures.ThreadPoolExecutor(2) as pool, Gate(tmp_path / "gate") as gate:
        first = pool.submit(post, "A", gate=gate)
        wait_until(lambda: lines(log) == ["A"], what="A in the worker")   # held there
        with hanging_up(daemon, f"/predictions/{name}", {"X-Log": str(log), "X-Tag": "B"}):
            wait_until(lambda: pending(daemon, name) == 1, what="B queued")
        # B leaves the queue when its client goes, not when a worker comes to it: the only
        # worker is still held by A
        wait_until(lambda: pending(daemon, name) == 0, what="B gone from the queue")
        assert not first.done()
        gate.open()
        last = pool.submit(post, "C")
        assert first.result()[1].status_code == 200 and last.result()[1].status_code == 200
    assert lines(log) == ["A", "C"]


def test_a_client_that_hangs_up_while_its_batch_fills_is_never_run(daemon, model, tmp_path):
    """Whether C then joins B's batch or starts its own, B is not sent (the batch that ends up
    holding only abandoned jobs is test_queue.py's, on virtual time)."""
    name = model("trace.mar", "hangup_batch", initial_workers=1, batch_size=2,
                 max_batch_delay=5000)
    log = tmp_path / "seen.log"
    with hanging_up(daemon, f"/predictions/{name}", {"X-Log": str(log), "X-Tag": "B"}):
        wait_taken(daemon, name, 1)     # B waits in the worker's batch for a companion
    wait_until(lambda: taken(daemon, name) == 0, what="B gone from the filling batch")
    _, r = traced(daemon, name, log)("C")
    assert r.status_code == 200 and r.text == "done"
    assert lines(log) == ["C"]


def test_a_client_that_hangs_up_mid_body_is_dropped_quietly(daemon, model, tmp_path):
    name = model("trace.mar", "hangup_body", initial_workers=1)
    log = tmp_path / "seen.log"
    port = daemon.ports["inference"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall((f"POST /predictions/{name} HTTP/1.1\r\nHost: x\r\nX-Log: {log}\r\n"
                      "X-Tag: B\r\nContent-Length: 100\r\n\r\n0123456789").encode())
    # the daemon is done with B: its access line, status 0 (nothing was sent)
    wait_until(lambda: f'"POST /predictions/{name}" 0 ' in daemon.log(), what="B's access line")
    _, r = traced(daemon, name, log)("C")
    assert r.status_code == 200 and lines(log) == ["C"]
    assert "unhandled error" not in daemon.log()


def test_unregister_while_a_batch_fills_answers_its_requests(daemon, model, tmp_path):
    name = model("trace.mar", "gone_model", initial_workers=1, batch_size=2,
                 max_batch_delay=5000)
    log = tmp_path / "seen.log"

    def post() -> tuple[float, requests.Response | None]:
        started = time.monotonic()
        try:
            r = daemon.infer("POST", f"/predictions/{name}", timeout=5,
                             headers={"X-Log": str(log), "X-Tag": "A"})
        except requests.Timeout:
            r = None
        return time.monotonic() - started, r

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(post)
        wait_taken(daemon, name, 1)   # A waits in the worker's batch for a companion
        assert daemon.unregister(name).status_code == 200
        elapsed, r = waiting.result()
    assert r is not None and r.status_code == 503 and elapsed < 3.0, elapsed
    assert r.json()["message"] == f'Model "{name}" was unregistered'
    assert lines(log) == []


# ---- health -------------------------------------------------------------------------------

def health(d: Daemon) -> tuple[tuple[int, dict], tuple[int, dict]]:
    ping = d.infer("GET", "/ping")
    ready = d.infer("GET", "/v2/health/ready")
    return (ping.status_code, ping.json()), (ready.status_code, ready.json())


HEALTHY = ((200, {"status": "Healthy"}), (200, {"ready": True}))
UNHEALTHY = ((500, {"status": "Unhealthy"}), (503, {"ready": False}))
# workers on their way to minWorkers: not ready, but healthy (TorchServe counts a starting
# worker healthy; a liveness probe must not restart a server that is loading a model)
STARTING = ((200, {"status": "Healthy"}), (503, {"ready": False}))


def test_failed_workers_make_ping_unhealthy(daemon, model):
    assert health(daemon) == HEALTHY
    name = model("fail_load.mar", "broken", initial_workers=1, synchronous="false")
    assert health(daemon) in (STARTING, UNHEALTHY)   # starting, then failing
    wait_until(lambda: [w["status"] for w in daemon.workers(name)] == ["FAILED"],
               what="the worker FAILED")
    assert health(daemon) == UNHEALTHY
    r = daemon.infer("GET", f"/v2/models/{name}/ready")
    assert r.status_code == 400 and "not ready" in r.json()["error"]
    daemon.unregister(name)
    assert health(daemon) == HEALTHY


def test_ready_only_once_a_scale_up_reaches_min_workers(daemon, model):
    name = model("gated_load.mar", "scaled", initial_workers=1)   # no gate yet: loads at once
    assert health(daemon) == HEALTHY
    with Gate(daemon.workdir / LOAD_GATE) as gate:
        r = daemon.mgmt("PUT", f"/models/{name}",
                        params={"min_worker": 2, "synchronous": "false"})
        assert r.status_code == 202, r.text
        assert health(daemon) == STARTING    # the second worker's load waits at the gate
        assert daemon.infer("GET", f"/v2/models/{name}/ready").status_code == 400
        gate.open()
    wait_until(lambda: health(daemon) == HEALTHY, what="healthy once both are READY")
    assert len(daemon.wait_workers(name, 2)) == 2
    r = daemon.infer("GET", f"/v2/models/{name}/ready")
    assert r.status_code == 200 and r.json() == {"name": name, "ready": True}


def test_worker_killed_mid_request_runs_it_again_on_the_replacement(daemon, model, tmp_path):
    """Re-dispatch on (the default): the request of a dead worker's batch runs once more, on
    the replacement, and answers 200; the metric counts it."""
    name = model("trace.mar", "second_chance", initial_workers=1)
    assert daemon.describe(name)[0]["redispatchOnWorkerDeath"] is True
    old = only_pid(daemon, name)
    log = tmp_path / "seen.log"
    post = traced(daemon, name, log)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        busy = pool.submit(post, "busy", 1.0)
        wait_until(lambda: lines(log) == ["busy"], what="busy in the worker")
        os.kill(old, signal.SIGKILL)
        _, r = busy.result()
    assert r.status_code == 200 and lines(log) == ["busy", "busy"]   # it ran twice
    metrics = requests.get(daemon.url("metrics", "/metrics"), timeout=30).text
    assert re.search(r'^torchd_redispatched_requests_total\{model_name="second_chance",'
                     r'model_version="1.0"\} 1\.0$', metrics, re.M), metrics
    assert only_pid(daemon, name) != old and gone(old)


def test_a_request_that_kills_every_worker_fails_after_one_redispatch(daemon, model):
    """It cannot loop: the second death answers 500, and other models serve throughout."""
    crasher = model("crasher.mar", "crasher", initial_workers=1)
    other = model("noop.mar", "bystander", initial_workers=1)
    r = daemon.infer("POST", f"/predictions/{crasher}", data=b"x", timeout=60)
    assert r.status_code == 500 and r.json()["message"] == "Worker died.", r.text
    # The 500 leaves at once; the second death is counted once the daemon has seen that
    # worker's process exit.
    wait_until(lambda: counter(daemon, "torchd_worker_restarts_total", crasher) >= 2,
               what="the second death counted")
    assert counter(daemon, "torchd_redispatched_requests_total", crasher) == 1
    # Settled: nothing is left to run again, so the next worker (after its backoff) lives.
    assert pending(daemon, crasher) == 0
    daemon.wait_workers(crasher, 1)
    assert counter(daemon, "torchd_worker_restarts_total", crasher) == 2
    assert daemon.infer("POST", f"/predictions/{other}").status_code == 200

