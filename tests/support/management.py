"""The management tests' daemon, recording server and helpers
(tests/integration/test_management*.py).

A module binds the fixtures to its own names (``served, recorder, mgmt, clean = base.served,
base.recorder, base.mgmt, base.clean``) and so gets its own daemon (its zygote costs a torch
import); every test registers its own names and the autouse ``clean`` fixture unregisters
whatever a test leaves behind, so tests stay independent.
"""
from __future__ import annotations

import json
import re
import shutil
import threading
import uuid
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from tests.support.archives import build_archive
from tests.support.daemon import Daemon
from tests.support.layout import torchserve_layout

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
DESCRIBE_KEYS = {"modelName", "modelVersion", "modelUrl", "engine", "runtime", "minWorkers",
                 "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout", "startupTimeout",
                 "loadedAtStartup", "workers", "jobQueueStatus",
                 # TorchServe 0.12's too (deviceIds only when model-config.yaml sets them)
                 "maxRetryTimeoutInSec", "clientTimeoutInMills", "parallelType",
                 "parallelLevel", "deviceType", "continuousBatching", "useJobTicket", "useVenv",
                 "stateful", "sequenceMaxIdleMSec", "sequenceTimeoutMSec", "maxNumSequence",
                 "maxSequenceJobQueueSize",
                 "redispatchOnWorkerDeath",   # torchd's: a dead worker's batch runs again
                 "ignoredConfigKeys"}   # torchd's: model-config.yaml keys it does not implement
# TorchServe's keys, plus torchd's "threads" (the worker's torch threads: README, deviations)
WORKER_KEYS = {"id", "startTime", "status", "memoryUsage", "pid", "gpu", "gpuUsage", "threads"}
NO_WORKERS = ("registered with 0 initial workers. Use scale workers API to add workers for the "
              "model.")
# The error types of POST /models (test_management_register*.py).
BAD_REQUEST, NOT_FOUND = "BadRequestException", "ModelNotFoundException"
INVALID, INTERNAL = "InvalidModelException", "InternalServerException"


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
    assert r.content == torchserve_layout(r.json())
    request_id_ok(r)


def assert_error(r: requests.Response, code: int, kind: str, message: str,
                 prefix: bool = False) -> None:
    assert r.status_code == code, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"code", "type", "message"}, body
    assert r.content == torchserve_layout(body), r.content
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


def extracted(d: Daemon) -> list[Path]:
    """The daemon's extracted archive copies (its runtime dir lives in our TMPDIR)."""
    return sorted(d.workdir.glob("tmp/torchd-*/models/*"))


def stable(doc: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A describe document without what changes by itself (live RSS)."""
    return [{**m, "workers": [{k: v for k, v in w.items() if k != "memoryUsage"}
                              for w in m["workers"]]} for m in doc]


def _descendants(d: Daemon) -> dict[int, str]:
    """Live (not zombie) descendants of the daemon: pid -> command line."""
    found = {}
    for proc in psutil.Process(d.pid).children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                found[proc.pid] = " ".join(proc.cmdline())
        except psutil.NoSuchProcess:
            pass
    return found
