"""scripts/torchd-health against the real daemon: healthy, a stopped worker, a killed worker
until it is back, --max-rss, --json, and the daemon gone. The daemon loads its store with
load_models=all, which these tests check on the way."""
from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from daemon.osutil import pid_gone
from tests.support.daemon import Daemon
from tests.support.ops import build_slow_archive, make_store, run_health
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def watched(archive_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("ops-health")
    store = make_store(archive_dir, workdir / "store", ["noop"])
    build_slow_archive(store, workdir / "slow-src")
    flag = workdir / "slow-load"
    d = Daemon(workdir, store, {"worker_spawn": "exec", "load_models": "all",
                                "default_workers_per_model": 1},
               env={"OPS_SLOW_LOAD_FLAG": str(flag)})
    try:
        d.start()
        health = ["--management-url", d.url("management", ""),
                  "--pid-file", str(workdir / "logs" / "torchd.pid")]
        yield SimpleNamespace(daemon=d, health=health, flag=flag)
    finally:
        d.cleanup()


def test_load_models_all_loads_every_archive_with_default_workers(watched):
    d = watched.daemon
    for name in ("noop", "slow"):
        [doc] = d.describe(name)
        assert doc["loadedAtStartup"] is True
        assert doc["minWorkers"] == 1
        assert [w["status"] for w in doc["workers"]] == ["READY"]


def test_healthy_server_exits_zero(watched):
    result = run_health(*watched.health)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == (f"OK: torchd pid {watched.daemon.pid}, 2 model version(s), "
                             "2 READY worker(s)\n")


def test_json_report(watched):
    result = run_health(*watched.health, "--json")
    assert result.returncode == 0, result.stdout
    report = json.loads(result.stdout)
    assert report["healthy"] is True and report["problems"] == []
    assert report["daemon"]["pid"] == watched.daemon.pid
    models = {m["name"]: m for m in report["models"]}
    assert set(models) == {"noop", "slow"}
    assert models["noop"]["liveReady"] == 1 and models["noop"]["workers"][0]["rss"] > 0


def test_max_rss(watched):
    assert run_health(*watched.health, "--max-rss", "100G").returncode == 0
    result = run_health(*watched.health, "--max-rss", "1K")
    assert result.returncode == 1
    assert result.stdout.startswith("UNHEALTHY: model noop version 1.0: worker ")
    assert "> --max-rss 0.0 MiB" in result.stdout and result.stdout.count("\n") == 1


def test_a_stopped_worker_is_unhealthy(watched):
    [worker] = watched.daemon.workers("noop")
    os.kill(worker["pid"], signal.SIGSTOP)
    try:
        wait_until(lambda: psutil.Process(worker["pid"]).status() == psutil.STATUS_STOPPED,
                   10, what="the worker stopped")   # a signal takes effect asynchronously
        result = run_health(*watched.health)
    finally:
        os.kill(worker["pid"], signal.SIGCONT)
    assert result.returncode == 1
    assert result.stdout == (f"UNHEALTHY: model noop version 1.0: 0 of 1 READY workers alive "
                             f"(worker {worker['id']} pid {worker['pid']} is stopped)\n")


def test_a_killed_worker_is_unhealthy_until_it_is_back(watched):
    d = watched.daemon
    [worker] = d.workers("slow")
    watched.flag.touch()   # the replacement loads slowly
    try:
        os.kill(worker["pid"], signal.SIGKILL)
        wait_until(lambda: pid_gone(worker["pid"]), 10, what="the worker dead")
        result = run_health(*watched.health)
        assert result.returncode == 1, result.stdout
        assert result.stdout.startswith("UNHEALTHY: model slow version 1.0: 0 of 1 READY "
                                        "workers alive ("), result.stdout
        assert "noop" not in result.stdout
        # the replacement: the killed worker itself reads READY until the daemon has seen it go
        wait_until(lambda: [(w["status"], w["pid"] != worker["pid"]) for w in d.workers("slow")]
                   == [("READY", True)], timeout=60, what="slow's worker back")
    finally:
        watched.flag.unlink()
    assert run_health(*watched.health).returncode == 0


def test_daemon_gone(watched):
    d = watched.daemon
    d.kill()
    result = run_health(*watched.health)
    assert result.returncode == 2
    assert result.stdout == (f"DOWN: torchd is not running: pid {d.pid} from "
                             f"{watched.health[-1]} is gone\n")
    # Without the pid file, only the URL: one where nothing listens. Not the dead daemon's port,
    # which is anyone's from here (CI saw another listener take it, and another process's
    # connection hold it); a port the test holds bound, never listening, refuses connections.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        unnamed = run_health("--management-url", f"http://127.0.0.1:{held.getsockname()[1]}")
    assert unnamed.returncode == 2
    assert unnamed.stdout.startswith("DOWN: torchd management API at http://127.0.0.1:")
    assert "does not answer: connection refused" in unnamed.stdout
