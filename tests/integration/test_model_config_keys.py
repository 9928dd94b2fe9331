"""model-config.yaml keys through the real daemon (SPEC 6): useJobTicket, clientTimeoutInMills
and jobQueueSize as TorchServe 0.12 serves them (a client timeout answers 504 where TorchServe
leaves the client hanging), and the keys torchd refuses at register and at start.

One daemon for the module; each test registers its own models and unregisters them.
"""
from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import pytest
import requests

from tests.support.archives import archive_source, copy_store
from tests.support.daemon import Daemon
from tests.support.gates import Gate
from tests.support.management import extracted
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(180)

# Writes "start <X-Tag>" to the file named by X-Log when the request reaches the handler, waits
# at the gate named by X-Gate (tests/support/gates.py) if any, then writes "end <X-Tag>": which
# requests ran, and in what order.
TRACE = '''
def handle(data, context):
    if data is None:
        return None
    header = context.get_request_header
    log, tag = header(0, "x-log"), header(0, "x-tag")
    if log:
        with open(log, "a") as f:
            f.write(f"start-{tag}\\n")
    gate = header(0, "x-gate")
    if gate:
        with open(gate) as waiting:   # a FIFO: until the test opens the gate
            waiting.read()
    if log:
        with open(log, "a") as f:
            f.write(f"end-{tag}\\n")
    return ["done" for _ in data]
'''

CONFIGS = {
    "ticket": "useJobTicket: true\n",
    "ctimeout": "clientTimeoutInMills: 300\n",
    "qsize": "jobQueueSize: 2\n",
    # a startup model: its workers are these, not default_workers_per_model (as TorchServe)
    "pinned": "minWorkers: 2\nmaxWorkers: 3\n",
    # TorchServe's ModelConfig reads a minWorkers below 1 as 1: this archive serves there
    "floor": "minWorkers: 0\nmaxWorkers: 2\n",
    # refused: what the answers would mean is not what torchd can serve
    "tp": "parallelType: tp\nparallelLevel: 2\n",
    "ranks": "parallelType: pptp\ntorchrun:\n  nproc-per-node: 2\n",
    "noidle": "sequenceBatching: true\nmaxNumSequence: 4\n",
    "cbasync": "continuousBatching: true\nasyncCommunication: true\nparallelType: custom\n"
               "parallelLevel: 2\n",
}
REFUSED = {
    "tp": ["parallelType tp with parallelLevel 2"],
    "ranks": ["parallelType pptp with torchrun nproc-per-node 2"],
    "noidle": ["sequenceBatching needs sequenceMaxIdleMSec above 0"],
    "cbasync": ["parallelType custom with parallelLevel 2",
                "continuousBatching and asyncCommunication cannot both be true"],
}
NO_WORKER = ('Model "ticket" has no worker to serve inference request. Please use scale '
             'workers API to add workers.')


@pytest.fixture(scope="module")
def daemon(archive_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Started with a refused model among its startup models (load_models)."""
    workdir = tmp_path_factory.mktemp("model-config-keys")
    store = copy_store(archive_dir, workdir / "store")
    for name, config in CONFIGS.items():
        archive_source(TRACE, name, store, workdir / "src", config=config)
    d = Daemon(workdir, store, {"job_queue_size": 10, "default_workers_per_model": 1,
                                "load_models": "noop.mar,tp.mar,pinned.mar"})
    d.start()
    yield d
    d.cleanup()


@pytest.fixture
def model(daemon: Daemon):
    """Register an archive with one worker for one test; unregistered afterwards."""
    names: list[str] = []

    def register(name: str) -> str:
        r = daemon.register(f"{name}.mar", initial_workers=1)
        assert r.status_code == 200, r.text
        names.append(name)
        return name

    yield register
    for name in names:
        daemon.unregister(name)


def poster(d: Daemon, name: str, log: Path):
    def post(tag: str, gate: Gate | None = None) -> tuple[float, requests.Response]:
        headers = {"X-Log": str(log), "X-Tag": tag}
        if gate is not None:
            headers["X-Gate"] = str(gate)
        started = time.monotonic()
        response = d.infer("POST", f"/predictions/{name}", headers=headers, timeout=60)
        return time.monotonic() - started, response
    return post


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_job_ticket_refuses_at_once_while_the_only_worker_is_busy(daemon, model, tmp_path):
    post = poster(daemon, model("ticket"), log := tmp_path / "ran.log")
    with concurrent.futures.ThreadPoolExecutor(1) as pool, Gate(tmp_path / "gate") as gate:
        first = pool.submit(post, "first", gate=gate)
        wait_until(lambda: lines(log) == ["start-first"], what="first in the worker")
        for tag in ("second", "third"):
            elapsed, refused = post(tag)
            assert refused.status_code == 503 and elapsed < 0.5, (refused.text, elapsed)
            assert refused.json() == {"code": 503, "type": "ServiceUnavailableException",
                                      "message": NO_WORKER}
        gate.open()
        assert first.result()[1].status_code == 200
    elapsed, served = post("fourth")          # the worker is free again
    assert served.status_code == 200 and served.text == "done"
    assert lines(log) == ["start-first", "end-first", "start-fourth", "end-fourth"]


def test_client_timeout_answers_504_and_a_queued_request_never_runs(daemon, model, tmp_path):
    post = poster(daemon, model("ctimeout"), log := tmp_path / "ran.log")
    [worker] = daemon.wait_workers("ctimeout", 1)
    with concurrent.futures.ThreadPoolExecutor(2) as pool, Gate(tmp_path / "gate") as gate:
        first = pool.submit(post, "first", gate=gate)   # held past the 300 ms limit
        wait_until(lambda: lines(log) == ["start-first"], what="first in the worker")
        queued = pool.submit(post, "queued")             # waits behind it
        answers = [first.result(), queued.result()]
        gate.open()                                      # the handler finishes, too late
    for elapsed, response in answers:
        assert response.status_code == 504 and 0.25 < elapsed < 0.8, (response.text, elapsed)
        assert response.json() == {"code": 504, "type": "RequestTimeoutException",
                                   "message": 'Model "ctimeout" did not answer within 300 ms '
                                              '(clientTimeoutInMills)'}
    wait_until(lambda: "end-first" in lines(log), what="the first request's handler done")
    elapsed, served = post("after")                      # a free worker answers in time
    assert served.status_code == 200 and elapsed < 0.3, elapsed
    assert lines(log) == ["start-first", "end-first", "start-after", "end-after"]
    assert daemon.workers("ctimeout")[0]["pid"] == worker["pid"]   # not killed for it


def test_yaml_job_queue_size_beats_the_config_key(daemon, model, tmp_path):
    post = poster(daemon, model("qsize"), log := tmp_path / "ran.log")
    assert daemon.describe("qsize")[0]["jobQueueStatus"]["remainingCapacity"] == 2   # not 10
    with concurrent.futures.ThreadPoolExecutor(4) as pool, Gate(tmp_path / "gate") as gate:
        first = pool.submit(post, "first", gate=gate)
        wait_until(lambda: lines(log) == ["start-first"], what="first in the worker")
        rest = [pool.submit(post, f"r{i}") for i in range(3)]
        wait_until(lambda: any(f.done() for f in rest), what="one answered at once")
        assert sum(f.done() for f in rest) == 1          # the two others wait in the queue
        gate.open()
        answers = [f.result()[1] for f in [first, *rest]]
    assert sorted(r.status_code for r in answers) == [200, 200, 200, 503]
    [full] = [r for r in answers if r.status_code == 503]
    assert full.json()["message"] == 'Model "qsize" job queue is full'
    assert len(lines(log)) == 6                          # three ran, start and end each


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_keys_torchd_cannot_honour_refuse_the_registration(daemon, name):
    before = extracted(daemon)
    r = daemon.register(f"{name}.mar", initial_workers=1)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["type"] == "BadRequestException"
    assert body["message"].startswith(f'Model "{name}" version 1.0 cannot be served as '
                                      "configured: ")
    for reason in REFUSED[name]:
        assert reason in body["message"], body
    assert daemon.mgmt("GET", f"/models/{name}").status_code == 404
    assert extracted(daemon) == before                   # nothing left behind
    assert daemon.infer("POST", "/predictions/noop").status_code == 200   # still serving


def test_a_refused_startup_model_is_logged_and_the_others_serve(daemon):
    assert 'startup model tp.mar failed: Model "tp" version 1.0 cannot be served as ' \
           "configured: parallelType tp with parallelLevel 2" in daemon.log()
    assert [m["modelName"] for m in daemon.mgmt("GET", "/models").json()["models"]] \
        == ["noop", "pinned"]
    assert daemon.infer("POST", "/predictions/noop").status_code == 200


def test_a_startup_models_yaml_workers_beat_the_configured_default(daemon):
    """TorchServe starts a startup model with its model-config.yaml's minWorkers/maxWorkers;
    default_workers_per_model (1 here) is for archives that set none.
    torchd gave every startup model the default, so an LLM archive pinned to one worker got
    one per CPU, each loading the model."""
    daemon.wait_workers("pinned", 2)
    [pinned] = daemon.describe("pinned")
    assert (pinned["minWorkers"], pinned["maxWorkers"]) == (2, 3)
    [noop] = daemon.describe("noop")
    assert (noop["minWorkers"], noop["maxWorkers"], len(noop["workers"])) == (1, 1, 1)


def test_a_yaml_minworkers_of_0_serves_with_one_worker_as_on_torchserve(daemon):
    r = daemon.register("floor.mar")
    assert r.status_code == 200 and "registered with 1 initial workers" in r.text, r.text
    try:
        [floor] = daemon.describe("floor")
        assert (floor["minWorkers"], floor["maxWorkers"]) == (1, 2)
        assert [w["status"] for w in floor["workers"]] == ["READY"]
        assert daemon.infer("POST", "/predictions/floor").text == "done"
    finally:
        daemon.unregister("floor")
