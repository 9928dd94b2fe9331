"""Management API (SPEC 1, issue 3) through the real daemon: the seed document's curl examples,
success messages, list pagination, set-default, describe, unregister and the HTTP conventions.

One daemon per module (its zygote costs a torch import); every test registers its own names and
an autouse fixture unregisters whatever a test leaves behind, so tests stay independent.
Registration (SPEC 1.1-1.2, its errors, downloads) is in test_management_register.py, built on
the fixtures here.
"""
from __future__ import annotations

import json
import re
import shutil
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from openapi_spec_validator import validate

from daemon.osutil import pid_gone as gone
from tests.support.archives import build_archive
from tests.support.daemon import Daemon
from tests.support.waiting import wait_until

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
DESCRIBE_KEYS = {"modelName", "modelVersion", "modelUrl", "engine", "runtime", "minWorkers",
                 "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout", "startupTimeout",
                 "loadedAtStartup", "workers", "jobQueueStatus"}
# TorchServe's keys, plus torchd's "threads" (the worker's torch threads: README, deviations)
WORKER_KEYS = {"id", "startTime", "status", "memoryUsage", "pid", "gpu", "gpuUsage", "threads"}
NO_WORKERS = ("registered with 0 initial workers. Use scale workers API to add workers for the "
              "model.")


# ---- a recording HTTP server for downloads ------------------------------------------------------

class RecordingServer(ThreadingHTTPServer):
    """Serves files from ``root`` and records every request path (to prove nothing was fetched)."""

    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _FileHandler)
        self.root = root
        self.requests: list[str] = []

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.server_address[1]}/{path}"


class _FileHandler(BaseHTTPRequestHandler):
    server: RecordingServer

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        path = self.server.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


# ---- fixtures ---------------------------------------------------------------------------------

def write_zip(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


@pytest.fixture(scope="module")
def served(archive_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the recording server serves: archives under names the model store does not have."""
    root = tmp_path_factory.mktemp("served")
    shutil.copyfile(archive_dir / "noop.mar", root / "dl_noop.mar")
    shutil.copyfile(archive_dir / "noop.mar", root / "noop.mar")
    write_zip(root / "dl_bad.mar", {"MAR-INF/MANIFEST.json": "{not json"})
    return root


@pytest.fixture(scope="module")
def recorder(served: Path) -> Iterator[RecordingServer]:
    server = RecordingServer(served)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def mgmt(archive_dir: Path, recorder: RecordingServer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """The module's daemon: a store with the test archives plus noop 2.0 and broken archives,
    downloads allowed from the recording server only, TMPDIR inside the workdir (so the extracted
    copies can be counted)."""
    workdir = tmp_path_factory.mktemp("mgmt")
    store = workdir / "store"
    store.mkdir()
    for item in archive_dir.iterdir():
        if item.is_file():
            shutil.copy2(item, store / item.name)
    v2 = build_archive("noop", workdir / "v2", version="2.0")
    shutil.copyfile(v2, store / "noop_2.mar")
    write_zip(store / "bad_manifest.mar", {"MAR-INF/MANIFEST.json": "{not json",
                                          "handler.py": "def handle(d, c):\n    return d\n"})
    write_zip(store / "no_manifest.mar", {"handler.py": "def handle(d, c):\n    return d\n"})
    (store / "garbage.mar").write_bytes(b"this is not a zip file")
    write_zip(store / "slow_fail.mar", {
        "MAR-INF/MANIFEST.json": json.dumps({"runtime": "python", "model": {
            "modelName": "slow_fail", "modelVersion": "1.0", "handler": "handler.py"}}),
        "handler.py": "import time\ntime.sleep(1.5)\nraise RuntimeError('failed slowly')\n"})
    write_zip(store / "slow_load.mar", {
        "MAR-INF/MANIFEST.json": json.dumps({"runtime": "python", "model": {
            "modelName": "slow_load", "modelVersion": "1.0", "handler": "handler.py"}}),
        "handler.py": "import time\ntime.sleep(1.5)\n\n\ndef handle(data, context):\n"
                      "    return [1 for _ in data] if data else None\n"})
    tmp = workdir / "tmp"
    tmp.mkdir()
    port = recorder.server_address[1]
    daemon = Daemon(workdir, store, {"allowed_urls": rf"http://127\.0\.0\.1:{port}/.*"},
                    env={"TMPDIR": str(tmp)})
    daemon.start()
    daemon.first_worker_id = _first_worker_id(daemon)
    yield daemon
    daemon.cleanup()


def _first_worker_id(d: Daemon) -> str:
    """The daemon's very first worker (SPEC 1.4: ids count from 9000)."""
    r = d.register("noop.mar", model_name="first", initial_workers=1)
    assert r.status_code == 200, r.text
    worker_id = d.workers("first")[0]["id"]
    assert d.unregister("first").status_code == 200
    return worker_id


def all_models(d: Daemon) -> list[str]:
    listed = d.mgmt("GET", "/models", params={"limit": 100}).json()["models"]
    return [m["modelName"] for m in listed]


def purge(d: Daemon, name: str) -> None:
    """Unregister every version of ``name``: the others first, the default last."""
    r = d.mgmt("GET", f"/models/{name}/all")
    if r.status_code == 404:
        return
    default = d.describe(name)[0]["modelVersion"]
    for doc in r.json():
        if doc["modelVersion"] != default:
            d.unregister(name, doc["modelVersion"])
    d.unregister(name, default)


@pytest.fixture(autouse=True)
def clean(request: pytest.FixtureRequest) -> Iterator[None]:
    """Whatever a test registered is unregistered afterwards (tests share the daemon)."""
    yield
    if "mgmt" not in request.fixturenames:
        return
    d: Daemon = request.getfixturevalue("mgmt")
    for name in all_models(d):
        purge(d, name)
    assert all_models(d) == []


# ---- assertions -------------------------------------------------------------------------------

def request_id_ok(r: requests.Response) -> None:
    rid = r.headers.get("x-request-id")
    assert rid is not None, (r.status_code, r.text)
    assert uuid.UUID(rid).version == 4


def assert_status(r: requests.Response, code: int, message: str) -> None:
    assert r.status_code == code, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"status": message}
    request_id_ok(r)


def assert_error(r: requests.Response, code: int, kind: str, message: str,
                 prefix: bool = False) -> None:
    assert r.status_code == code, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"code", "type", "message"}, body
    assert (body["code"], body["type"]) == (code, kind), body
    if prefix:
        assert body["message"].startswith(message), body
    else:
        assert body["message"] == message, body
    request_id_ok(r)


def registered(name: str, version: str, workers: int) -> str:
    if workers == 0:
        return f'Model "{name}" Version: {version} {NO_WORKERS}'
    return f'Model "{name}" Version: {version} registered with {workers} initial workers'


def post_models(d: Daemon, **params: Any) -> requests.Response:
    """POST /models with exactly these query parameters (Daemon.register adds synchronous)."""
    return d.mgmt("POST", "/models", params=params)


def wait_for(predicate, timeout: float = 30, what: Any = "condition") -> Any:
    return wait_until(predicate, timeout, 0.1, what)


def ready_pids(d: Daemon, name: str, version: str | None = None) -> set[int]:
    return {w["pid"] for w in d.workers(name, version) if w["status"] == "READY"}


def extracted(d: Daemon) -> list[Path]:
    """The daemon's extracted archive copies (its runtime dir lives in our TMPDIR)."""
    return sorted(d.workdir.glob("tmp/torchd-*/models/*"))


def stable(doc: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A describe document without what changes by itself (live RSS)."""
    return [{**m, "workers": [{k: v for k, v in w.items() if k != "memoryUsage"}
                              for w in m["workers"]]} for m in doc]


# ---- the seed document's examples -------------------------------------------------------------

def test_seed_register_zero_workers(mgmt: Daemon) -> None:
    r = post_models(mgmt, url="noop.mar")
    assert_status(r, 200, registered("noop", "1.0", 0))
    assert mgmt.workers("noop") == []


def test_seed_register_async(mgmt: Daemon) -> None:
    r = post_models(mgmt, initial_workers=1, synchronous="false", url="noop.mar")
    assert_status(r, 202, "Processing worker updates...")
    workers = mgmt.wait_workers("noop", 1)
    assert psutil.pid_exists(workers[0]["pid"])


def test_seed_register_sync_then_predict_at_once(mgmt: Daemon) -> None:
    r = post_models(mgmt, initial_workers=1, synchronous="true", url="noop.mar")
    assert_status(r, 200, registered("noop", "1.0", 1))
    [worker] = mgmt.workers("noop")
    assert worker["status"] == "READY"
    p = mgmt.infer("POST", "/predictions/noop", data=b"x")
    assert p.status_code == 200 and p.json() == {"ok": 1}


def test_seed_scale_async_sync_and_version(mgmt: Daemon) -> None:
    # SPEC 1.1: register is synchronous by default (TorchServe's code, not its docs).
    assert_status(post_models(mgmt, url="noop.mar", initial_workers=1), 200,
                  registered("noop", "1.0", 1))
    first = ready_pids(mgmt, "noop")
    assert_status(mgmt.mgmt("PUT", "/models/noop", params={"min_worker": 3}), 202,
                  "Processing worker updates...")
    pids = {w["pid"] for w in mgmt.wait_workers("noop", 3)}
    assert first < pids and all(psutil.pid_exists(p) for p in pids)
    assert psutil.Process(mgmt.pid) in _ancestors(next(iter(pids)))

    r = mgmt.mgmt("PUT", "/models/noop", params={"min_worker": 1, "synchronous": "true"})
    assert_status(r, 200, "Workers scaled to 1 for model: noop")
    remaining = ready_pids(mgmt, "noop")
    assert len(remaining) == 1 and len(mgmt.workers("noop")) == 1
    wait_for(lambda: all(gone(p) for p in pids - remaining), 15, "stopped workers exit")

    r = mgmt.mgmt("PUT", "/models/noop", params={"min_worker": 3, "synchronous": "true"})
    assert_status(r, 200, "Workers scaled to 3 for model: noop")
    assert len(ready_pids(mgmt, "noop")) == 3

    assert_status(post_models(mgmt, url="noop_2.mar"), 200, registered("noop", "2.0", 0))
    r = mgmt.mgmt("PUT", "/models/noop/2.0", params={"min_worker": 3, "synchronous": "true"})
    assert_status(r, 200, "Workers scaled to 3 for model: noop, version: 2.0")
    v2 = ready_pids(mgmt, "noop", "2.0")
    assert len(v2) == 3 and not v2 & ready_pids(mgmt, "noop")
    described = mgmt.describe("noop", "2.0")[0]
    assert (described["minWorkers"], described["maxWorkers"]) == (3, 3)
    r = mgmt.mgmt("PUT", "/models/noop/2.0", params={"min_worker": 0, "synchronous": "true"})
    assert_status(r, 200, "Workers scaled to 0 for model: noop, version: 2.0")
    assert mgmt.workers("noop", "2.0") == []
    wait_for(lambda: all(gone(p) for p in v2), 15, "version 2.0 workers exit")


def _ancestors(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).parents()


def test_seed_describe_default_version_and_all(mgmt: Daemon) -> None:
    assert post_models(mgmt, url="noop.mar", initial_workers=1).status_code == 200
    assert post_models(mgmt, url="noop_2.mar", initial_workers=1,
                       synchronous="true").status_code == 200
    default = mgmt.mgmt("GET", "/models/noop")
    assert default.status_code == 200 and default.headers["content-type"] == "application/json"
    request_id_ok(default)
    [v1] = default.json()
    assert (v1["modelName"], v1["modelVersion"], v1["modelUrl"]) == ("noop", "1.0", "noop.mar")
    [v2] = mgmt.describe("noop", "2.0")
    assert (v2["modelVersion"], v2["modelUrl"]) == ("2.0", "noop_2.mar")
    both = mgmt.describe("noop", "all")
    assert [m["modelVersion"] for m in both] == ["1.0", "2.0"]
    assert stable(both) == stable([v1, v2])
    for doc in both:
        assert set(doc) == DESCRIBE_KEYS
        assert (doc["engine"], doc["runtime"], doc["minWorkers"], doc["maxWorkers"],
                doc["batchSize"], doc["maxBatchDelay"]) == ("Torch", "python", 1, 1, 1, 100)
        assert [set(w) for w in doc["workers"]] == [WORKER_KEYS]


def test_seed_unregister_version_and_set_default(mgmt: Daemon) -> None:
    assert post_models(mgmt, url="noop.mar").status_code == 200
    assert post_models(mgmt, url="noop_2.mar").status_code == 200
    assert mgmt.describe("noop")[0]["modelVersion"] == "1.0"   # a second version is not default
    r = mgmt.mgmt("PUT", "/models/noop/2.0/set-default")
    assert_status(r, 200, 'Default version successfully updated for model "noop" to "2.0"')
    assert mgmt.describe("noop")[0]["modelVersion"] == "2.0"
    listed = mgmt.mgmt("GET", "/models").json()["models"]
    assert listed == [{"modelName": "noop", "modelUrl": "noop_2.mar"}]
    assert_status(mgmt.mgmt("DELETE", "/models/noop/1.0"), 200, 'Model "noop" unregistered')
    assert [m["modelVersion"] for m in mgmt.describe("noop", "all")] == ["2.0"]
    assert_status(mgmt.mgmt("DELETE", "/models/noop"), 200, 'Model "noop" unregistered')
    assert mgmt.mgmt("GET", "/models/noop").status_code == 404


def test_seed_list_with_pagination(mgmt: Daemon) -> None:
    names = ["pg_c", "pg_a", "pg_e", "pg_b", "pg_d"]
    for name in names:
        assert post_models(mgmt, url="noop.mar", model_name=name).status_code == 200
    everything = [{"modelName": n, "modelUrl": "noop.mar"} for n in sorted(names)]

    def page(**params: Any) -> dict[str, Any]:
        r = mgmt.mgmt("GET", "/models", params=params)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        request_id_ok(r)
        return r.json()

    assert page() == {"models": everything}
    assert page(limit=2, next_page_token=2) == {"nextPageToken": "4", "models": everything[2:4]}
    assert page(limit=2) == {"nextPageToken": "2", "models": everything[:2]}
    assert page(limit=2, next_page_token=4) == {"models": everything[4:]}
    # SPEC 1.6: the token is present whenever offset + limit <= total, even on the last page.
    assert page(limit=5) == {"nextPageToken": "5", "models": everything}
    assert page(limit=3, next_page_token=2) == {"nextPageToken": "5", "models": everything[2:]}
    assert page(limit=6) == {"models": everything}
    assert page(limit=5, next_page_token=5) == {"models": []}
    assert page(next_page_token=9) == {"models": []}
    assert page(limit=0) == {"nextPageToken": "0", "models": []}
    for big in (101, 1000, -1, -100):            # > 100 or < 0 mean 100
        assert page(limit=big) == {"models": everything}
    assert page(limit=2, next_page_token=-3) == {"nextPageToken": "2", "models": everything[:2]}
    assert page(limit="abc", next_page_token="x") == {"models": everything}   # lenient ints


def test_options_on_both_ports_is_valid_openapi(mgmt: Daemon) -> None:
    for api, path in (("management", "/models/{model_name}/{model_version}/set-default"),
                      ("inference", "/predictions/{model_name}/{model_version}")):
        r = requests.options(mgmt.url(api, "/"), timeout=10)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        request_id_ok(r)
        doc = r.json()
        validate(doc)
        assert doc["openapi"] == "3.0.1" and path in doc["paths"]
        bare = requests.request("OPTIONS", f"http://127.0.0.1:{mgmt.ports[api]}", timeout=10)
        assert bare.json() == doc
        assert requests.get(mgmt.url(api, "/api-description"), timeout=10).json() == doc
    mgmt_paths = requests.options(mgmt.url("management", "/"), timeout=10).json()["paths"]
    assert "/predictions/{model_name}" not in mgmt_paths and "/models" in mgmt_paths


# ---- describe ---------------------------------------------------------------------------------

def test_describe_workers_are_real(mgmt: Daemon) -> None:
    assert mgmt.first_worker_id == "9000"
    r = post_models(mgmt, url="noop.mar", model_name="real", initial_workers=2,
                    synchronous="true")
    assert r.status_code == 200, r.text
    [doc] = mgmt.describe("real")
    assert set(doc) == DESCRIBE_KEYS
    assert doc == {**doc, "modelName": "real", "modelVersion": "1.0", "modelUrl": "noop.mar",
                   "engine": "Torch", "runtime": "python", "minWorkers": 2, "maxWorkers": 2,
                   "batchSize": 1, "maxBatchDelay": 100, "responseTimeout": 120,
                   "startupTimeout": 120, "loadedAtStartup": False,
                   "jobQueueStatus": {"remainingCapacity": 100, "pendingRequests": 0}}
    ids = [w["id"] for w in doc["workers"]]
    assert all(isinstance(i, str) and int(i) > 9000 for i in ids) and len(set(ids)) == 2
    daemon_proc = psutil.Process(mgmt.pid)
    for worker in doc["workers"]:
        assert set(worker) == WORKER_KEYS
        assert worker["status"] == "READY" and ISO_UTC.match(worker["startTime"])
        assert (worker["gpu"], worker["gpuUsage"]) == (False, "N/A")
        assert psutil.pid_exists(worker["pid"]) and daemon_proc in _ancestors(worker["pid"])
        rss = psutil.Process(worker["pid"]).memory_info().rss
        assert 0 < worker["memoryUsage"] and abs(worker["memoryUsage"] - rss) < rss // 2
    # Ids are never reused: scaling down and up again gives new ones.
    assert mgmt.mgmt("PUT", "/models/real", params={"min_worker": 0,
                                                    "synchronous": "true"}).status_code == 200
    assert mgmt.mgmt("PUT", "/models/real", params={"min_worker": 1,
                                                    "synchronous": "true"}).status_code == 200
    [again] = mgmt.workers("real")
    assert int(again["id"]) > max(int(i) for i in ids)


def test_describe_truthful_status_of_a_failing_worker(mgmt: Daemon) -> None:
    r = post_models(mgmt, url="fail_load.mar", initial_workers=1, synchronous="false")
    assert_status(r, 202, "Processing worker updates...")
    seen: set[str] = set()

    def failed() -> bool:
        workers = mgmt.workers("fail_load")
        seen.update(w["status"] for w in workers)
        return any(w["status"] == "FAILED" for w in workers)

    wait_for(failed, 60, "worker ends FAILED")
    assert seen <= {"STARTING", "BACKOFF", "FAILED"}
    [worker] = mgmt.workers("fail_load")
    assert "torchd_no_such_module" in worker.get("lastError", "")
    assert mgmt.infer("GET", "/ping").status_code == 500


def test_describe_customized_metadata(mgmt: Daemon) -> None:
    assert post_models(mgmt, url="describe.mar", model_name="cust", initial_workers=1,
                       synchronous="true").status_code == 200
    plain = mgmt.describe("cust")[0]
    assert "customizedMetadata" not in plain
    for path in ("/models/cust", "/models/cust/1.0", "/models/cust/all"):
        r = mgmt.mgmt("GET", path, params={"customized": "true"})
        assert r.status_code == 200, r.text
        [doc] = r.json()
        assert doc["customizedMetadata"] == json.dumps({"hello": "world", "model": "cust"})
    assert post_models(mgmt, url="noop.mar", model_name="nocust", initial_workers=1,
                       synchronous="true").status_code == 200
    r = mgmt.mgmt("GET", "/models/nocust", params={"customized": "true"})
    assert r.status_code == 200 and r.json()[0]["customizedMetadata"] == ""
    assert mgmt.mgmt("PUT", "/models/cust", params={"min_worker": 0,
                                                    "synchronous": "true"}).status_code == 200
    assert_error(mgmt.mgmt("GET", "/models/cust", params={"customized": "true"}), 503,
                 "ServiceUnavailableException",
                 'Model "cust" has no worker to serve the describe request')


def _predict_sleep(d: Daemon, name: str, seconds: float) -> tuple[int, Any, float]:
    r = d.infer("POST", f"/predictions/{name}", json={"sleep": seconds}, timeout=60)
    try:
        body = r.json()
    except ValueError:
        body = r.text
    return r.status_code, body, time.monotonic()


def _queue(d: Daemon, name: str) -> dict[str, int]:
    return d.describe(name)[0]["jobQueueStatus"]


def test_queue_status_and_unregister_with_work_in_flight(mgmt: Daemon) -> None:
    assert post_models(mgmt, url="sleep.mar", model_name="slow", initial_workers=1,
                       synchronous="true").status_code == 200
    [worker] = mgmt.workers("slow")
    with ThreadPoolExecutor(4) as pool:
        in_flight = pool.submit(_predict_sleep, mgmt, "slow", 4)
        time.sleep(1.0)        # the worker has taken it: nothing is waiting
        assert _queue(mgmt, "slow") == {"remainingCapacity": 100, "pendingRequests": 0}
        queued = [pool.submit(_predict_sleep, mgmt, "slow", 0) for _ in range(2)]
        wait_for(lambda: _queue(mgmt, "slow")["pendingRequests"] == 2, 10, "2 queued")
        assert _queue(mgmt, "slow") == {"remainingCapacity": 98, "pendingRequests": 2}
        assert not in_flight.done()
        started = time.monotonic()
        r = mgmt.unregister("slow")
        unregistered = time.monotonic()
        assert_status(r, 200, 'Model "slow" unregistered')
        for future in queued:
            status, body, finished = future.result(10)
            assert status == 503, body
            assert body["type"] == "ServiceUnavailableException"
            assert finished - started < 1.5          # answered at once, not after the sleep
        status, body, finished = in_flight.result(10)
        assert (status, body) == (200, {"slept": 4.0})
        assert finished <= unregistered + 1.0         # unregister waited for it
    wait_for(lambda: gone(worker["pid"]), 15, "worker exits")
    assert mgmt.infer("POST", "/predictions/slow").status_code == 404


# ---- HTTP conventions -------------------------------------------------------------------------

def test_trailing_slash_unknown_path_wrong_method(mgmt: Daemon) -> None:
    assert post_models(mgmt, url="noop.mar", model_name="slash").status_code == 200
    r = mgmt.mgmt("GET", "/models/")
    assert r.status_code == 200 and r.json()["models"][0]["modelName"] == "slash"
    request_id_ok(r)
    assert mgmt.mgmt("GET", "/models/slash/").json()[0]["modelName"] == "slash"
    assert mgmt.mgmt("GET", "/models/slash/1.0/").json()[0]["modelVersion"] == "1.0"
    assert mgmt.mgmt("PUT", "/models/slash/1.0/set-default/").status_code == 200
    not_found = "Requested resource is not found, please refer to API document."
    not_allowed = "Requested method is not allowed, please refer to API document."
    for method, path in (("GET", "/nothing"), ("GET", "/models/slash/1.0/set-default/x"),
                         ("GET", "/predictions/slash")):
        assert_error(mgmt.mgmt(method, path), 404, "ResourceNotFoundException", not_found)
    for method, path in (("PATCH", "/models"), ("DELETE", "/models"), ("POST", "/models/slash"),
                         ("GET", "/models/slash/1.0/set-default"), ("GET", "/"), ("POST", "/"),
                         ("PUT", "/api-description")):
        assert_error(mgmt.mgmt(method, path), 405, "MethodNotAllowedException", not_allowed)
    assert_error(mgmt.infer("GET", "/nothing"), 404, "ResourceNotFoundException", not_found)
    ids = {mgmt.mgmt("GET", "/models").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3


def test_bad_parameters_change_nothing(mgmt: Daemon) -> None:
    assert post_models(mgmt, url="noop.mar", model_name="steady", initial_workers=1,
                       synchronous="true").status_code == 200
    before = stable(mgmt.describe("steady", "all"))
    listed = mgmt.mgmt("GET", "/models").json()
    bad = [("PUT", "/models/steady", {"min_worker": -1}),
           ("PUT", "/models/steady", {"min_worker": 3, "max_worker": 2}),
           ("PUT", "/models/steady", {"min_worker": 1, "max_worker": 1000}),
           ("PUT", "/models/steady", {"max_worker": -5}),
           ("PUT", "/models/steady/9.9", {"min_worker": 2}),
           ("PUT", "/models/steady/9.9/set-default", {}),
           ("DELETE", "/models/steady/9.9", {}),
           ("GET", "/models/steady/9.9", {}),
           ("POST", "/models", {"url": "noop.mar", "model_name": "steady"}),
           ("POST", "/models", {"url": "noop.mar", "model_name": "steady", "runtime": "java"}),
           ("POST", "/models", {"url": "noop.mar", "model_name": "steady2",
                                "initial_workers": 500}),
           ("POST", "/models", {"url": "nothere.mar"}),
           ("POST", "/models", {"url": "bad_manifest.mar"})]
    for method, path, params in bad:
        r = mgmt.mgmt(method, path, params=params)
        assert 400 <= r.status_code < 500, (method, path, params, r.text)
        request_id_ok(r)
    assert stable(mgmt.describe("steady", "all")) == before
    assert mgmt.mgmt("GET", "/models").json() == listed
    assert mgmt.infer("POST", "/predictions/steady").json() == {"ok": 1}


# ---- errors of scale, describe, unregister, set-default (SPEC 1.3-1.7) ------------------------

MODEL_NOT_FOUND, VERSION_NOT_FOUND = "ModelNotFoundException", "ModelVersionNotFoundException"


def test_unknown_model_everywhere(mgmt: Daemon) -> None:
    calls = [("PUT", "/models/ghost"), ("PUT", "/models/ghost/1.0"), ("GET", "/models/ghost"),
             ("GET", "/models/ghost/1.0"), ("GET", "/models/ghost/all"),
             ("DELETE", "/models/ghost"), ("DELETE", "/models/ghost/1.0"),
             ("PUT", "/models/ghost/1.0/set-default")]
    for method, path in calls:
        assert_error(mgmt.mgmt(method, path), 404, MODEL_NOT_FOUND, "Model not found: ghost")


def test_unknown_version_wordings(mgmt: Daemon) -> None:
    assert post_models(mgmt, url="noop.mar", model_name="known").status_code == 200
    colons = "Model version: 9.9 does not exist for model: known"
    for method, path in (("PUT", "/models/known/9.9"), ("GET", "/models/known/9.9"),
                         ("DELETE", "/models/known/9.9")):
        assert_error(mgmt.mgmt(method, path), 404, VERSION_NOT_FOUND, colons)
    assert_error(mgmt.mgmt("PUT", "/models/known/9.9/set-default"), 404, VERSION_NOT_FOUND,
                 "Model version 9.9 does not exist for model known")


def test_default_version_cannot_be_removed_while_others_exist(mgmt: Daemon) -> None:
    assert post_models(mgmt, url="noop.mar", model_name="dflt").status_code == 200
    assert post_models(mgmt, url="noop_2.mar", model_name="dflt").status_code == 200
    for path in ("/models/dflt", "/models/dflt/1.0"):
        r = mgmt.mgmt("DELETE", path)
        assert_error(r, 403, "InvalidModelVersionException",
                     "Cannot remove default version for model dflt")
    assert [m["modelVersion"] for m in mgmt.describe("dflt", "all")] == ["1.0", "2.0"]
    assert_status(mgmt.mgmt("DELETE", "/models/dflt/2.0"), 200, 'Model "dflt" unregistered')
    assert_status(mgmt.mgmt("DELETE", "/models/dflt/1.0"), 200, 'Model "dflt" unregistered')


def test_scale_parameter_errors_in_torchserve_order(mgmt: Daemon) -> None:
    assert post_models(mgmt, url="noop.mar", model_name="sc", initial_workers=1).status_code == 200
    less = "max_worker cannot be less than min_worker."
    negative = "min_worker and max_worker must not be negative."
    for path in ("/models/sc", "/models/sc/1.0", "/models/ghost", "/models/sc/9.9"):
        # TorchServe checks the numbers before it looks the model up.
        assert_error(mgmt.mgmt("PUT", path, params={"min_worker": 3, "max_worker": 2}), 400,
                     "BadRequestException", less)
        assert_error(mgmt.mgmt("PUT", path, params={"min_worker": 2, "max_worker": -1}), 400,
                     "BadRequestException", less)
        for params in ({"min_worker": -1}, {"min_worker": -3, "max_worker": -1},
                       {"min_worker": -1, "max_worker": 2}):
            assert_error(mgmt.mgmt("PUT", path, params=params), 400, "BadRequestException",
                         negative)
    for params in ({"min_worker": 65}, {"min_worker": 1, "max_worker": 65},
                   {"min_worker": 2161, "synchronous": "true"}):
        assert_error(mgmt.mgmt("PUT", "/models/sc", params=params), 400, "BadRequestException",
                     "Requested workers exceed the limit of max_workers=64", prefix=True)
    doc = mgmt.describe("sc")[0]
    assert (doc["minWorkers"], doc["maxWorkers"], len(doc["workers"])) == (1, 1, 1)


def test_documented_twins_post_ping_and_put_predictions(mgmt: Daemon) -> None:
    doc = requests.options(mgmt.url("inference", "/"), timeout=10).json()
    assert {"get", "post"} <= set(doc["paths"]["/ping"])
    assert "put" in doc["paths"]["/predictions/{model_name}/{model_version}"]
    for method in ("GET", "POST"):
        r = mgmt.infer(method, "/ping")
        assert (r.status_code, r.json()) == (200, {"status": "Healthy"})
    assert post_models(mgmt, url="noop.mar", initial_workers=1).status_code == 200
    for path in ("/predictions/noop", "/predictions/noop/1.0"):
        r = mgmt.infer("PUT", path, data=b"x")
        assert (r.status_code, r.json()) == (200, {"ok": 1})


def test_sync_register_and_scale_answer_206_when_only_some_workers_start(mgmt: Daemon) -> None:
    """SPEC 1.1/1.3: 206 "Workers scaling in progress..." when fewer than asked came up (the
    first_only handler loads in one worker of its extracted copy and fails in every other)."""
    build_archive("first_only", mgmt.model_store)
    r = post_models(mgmt, url="first_only.mar", initial_workers=2, synchronous="true")
    assert_status(r, 206, "Workers scaling in progress...")
    assert [w["status"] for w in mgmt.workers("first_only")].count("READY") == 1
    assert mgmt.infer("POST", "/predictions/first_only").json() == {"ok": 1}
    r = mgmt.mgmt("PUT", "/models/first_only", params={"min_worker": 3, "synchronous": "true"})
    assert_status(r, 206, "Workers scaling in progress...")
    assert_status(mgmt.unregister("first_only"), 200, 'Model "first_only" unregistered')
