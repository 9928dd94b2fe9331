"""Snapshots through the real daemon (SPEC 5.2): what was registered, scaled, re-versioned and
re-defaulted survives SIGTERM-and-restart and kill -9-and-restart exactly; a kill -9 right after
a 2xx loses nothing; a corrupt snapshot or a vanished archive stops the start, naming it; a
downloaded archive is restored from the model store without fetching it again.

One working directory for the module, restarted by each test in turn (they run in file order).
"""
from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from daemon.models.snapshots import list_snapshots
from tests.support.archives import build_archive
from tests.support.daemon import Daemon
from tests.support.ops import all_models, make_store


class RecordingHandler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def archive_server(archive_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    served = tmp_path_factory.mktemp("served")
    shutil.copy2(archive_dir / "noop.mar", served / "dl.mar")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(RecordingHandler, directory=str(served)))
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def world(archive_dir: Path, archive_server, tmp_path_factory: pytest.TempPathFactory):
    """A daemon with every kind of management change behind it, and its describe documents."""
    workdir = tmp_path_factory.mktemp("ops-snapshots")
    store = make_store(archive_dir, workdir / "store", ["noop", "sleep", "echo"])
    build_archive("noop", store, name="noop_v2", version="2.0")
    base = f"http://127.0.0.1:{archive_server.server_address[1]}"
    d = Daemon(workdir, store, {"worker_spawn": "exec", "allowed_urls": f"{base}/.*"})
    try:
        d.start(ncs=False)
        ok = [d.register("noop.mar", model_name="multi", initial_workers=1),
              d.register("noop_v2.mar", model_name="multi", initial_workers=1),
              d.mgmt("PUT", "/models/multi/2.0/set-default"),
              d.register("sleep.mar", model_name="sl", initial_workers=1, batch_size=2,
                         max_batch_delay=50, response_timeout=30),
              d.mgmt("PUT", "/models/sl", params={"min_worker": 2, "max_worker": 3,
                                                  "synchronous": "true"}),
              d.register("echo.mar", model_name="zero"),
              d.register(f"{base}/dl.mar", model_name="dl", initial_workers=1)]
        assert [r.status_code for r in ok] == [200] * 7, [r.text for r in ok]
        assert archive_server.requests == ["/dl.mar"]
        before = all_models(d)
        assert [doc["modelVersion"] for doc in before["multi"]] == ["1.0", "2.0"]
        yield SimpleNamespace(daemon=d, before=before, store=store, server=archive_server)
    finally:
        d.cleanup()


def restart(d: Daemon) -> None:
    d.start(ncs=False)


def test_sigterm_and_restart_restores_everything_exactly(world):
    d = world.daemon
    assert d.stop() == 0
    restart(d)
    assert all_models(d) == world.before
    assert d.describe("multi")[0]["modelVersion"] == "2.0"   # the default survived
    assert d.infer("POST", "/predictions/multi/1.0", data=b"x").json() == {"ok": 1}


def test_kill9_and_restart_restores_everything_exactly(world):
    d = world.daemon
    d.kill()
    restart(d)
    assert all_models(d) == world.before
    assert d.infer("POST", "/predictions/sl", json={"sleep": 0}).json() == {"slept": 0.0}


def test_downloaded_archive_is_restored_from_the_store_without_fetching(world):
    d = world.daemon
    assert world.server.requests == ["/dl.mar"]   # two restarts later, still one download
    assert d.describe("dl")[0]["modelUrl"].endswith("/dl.mar")
    assert d.infer("POST", "/predictions/dl", data=b"x").json() == {"ok": 1}


def test_kill9_right_after_a_2xx_loses_nothing(world):
    d = world.daemon
    answers = [d.register("noop.mar", model_name="late", initial_workers=1),
               d.mgmt("PUT", "/models/sl", params={"min_worker": 1, "max_worker": 1}),
               d.mgmt("PUT", "/models/multi/1.0/set-default"),
               d.unregister("zero")]
    assert [r.status_code for r in answers] == [200, 202, 200, 200], [r.text for r in answers]
    d.kill()   # at once: no final snapshot
    restart(d)
    after = all_models(d)
    assert set(after) == {"multi", "sl", "dl", "late"}
    assert [w["status"] for w in after["late"][0]["workers"]] == ["READY"]
    assert (after["sl"][0]["minWorkers"], after["sl"][0]["maxWorkers"]) == (1, 1)
    assert len(after["sl"][0]["workers"]) == 1
    assert d.describe("multi")[0]["modelVersion"] == "1.0"


def test_corrupt_newest_snapshot_stops_the_start_naming_the_file(world):
    d = world.daemon
    assert d.stop() == 0
    snapshots = list_snapshots(d.workdir / "logs" / "config")
    stamp, seq, kind = snapshots[-1].name.split("-")
    corrupt = snapshots[-1].with_name(f"{stamp}-{int(seq) + 1:06d}-{kind}")
    corrupt.write_text('{"models": {"multi": ')
    try:
        d.start(ncs=False, wait=False)
        assert d.proc.wait(60) == 1
        assert f"cannot start: snapshot {corrupt}: not valid JSON" in d.log()
        assert "--ncs" in d.log()
        assert list_snapshots(d.workdir / "logs" / "config")[-1] == corrupt   # not overwritten
    finally:
        corrupt.unlink()


def test_vanished_archive_stops_the_start_naming_the_model(world):
    d = world.daemon
    snapshots = list_snapshots(d.workdir / "logs" / "config")
    (world.store / "noop_v2.mar").unlink()
    d.start(ncs=False, wait=False)
    assert d.proc.wait(60) == 1
    log = d.log()
    assert f"cannot start: snapshot {snapshots[-1]}: cannot restore model multi version 2.0" \
        in log, log
    assert "noop_v2.mar" in log
    assert list_snapshots(d.workdir / "logs" / "config") == snapshots


def test_kill9_right_after_a_failed_synchronous_register_does_not_restore_it(make_daemon):
    # The 500 rolls the registration back; the snapshot written when it was added must not
    # outlive that rollback, or the next start brings back a model the client saw fail.
    d = make_daemon({"worker_spawn": "exec"}, ncs=False)
    assert d.register("noop.mar", model_name="kept", initial_workers=1).status_code == 200
    failed = d.register("fail_load.mar", model_name="broken", initial_workers=1)
    assert failed.status_code == 500, failed.text
    d.kill()   # at once: no final snapshot
    restart(d)
    listed = d.mgmt("GET", "/models").json()["models"]
    assert [m["modelName"] for m in listed] == ["kept"]
    assert d.wait_workers("kept", 1)
