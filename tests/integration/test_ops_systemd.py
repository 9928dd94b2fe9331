"""systemd through the real daemon: READY=1 once listeners serve and startup models are loaded,
STATUS= lines, WATCHDOG=1 pings, STOPPING=1 and a drained exit 0 on SIGTERM; the unit file.

One daemon for the module (the zygote path, as in production); the SIGTERM test runs last.
"""
from __future__ import annotations

import itertools
import json
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from daemon.ops import cli
from tests.support.daemon import REPO, Daemon
from tests.support.ops import NotifyListener, make_store
from tests.support.supervision import wait_taken

UNIT = REPO / "scripts" / "torchd.service"


@pytest.fixture(scope="module")
def notified(archive_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    listener = NotifyListener()
    workdir = tmp_path_factory.mktemp("ops-systemd")
    store = make_store(archive_dir, workdir / "store", ["noop", "sleep"])
    # The `models` JSON sets sleep's workers; noop gets default_workers_per_model.
    settings = {"default_workers_per_model": 2,
                "models": json.dumps({"sleep": {"1.0": {"minWorkers": 1, "maxWorkers": 1}}})}
    d = Daemon(workdir, store, settings,
               env={"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "1000000"})
    try:
        # Snapshots on (a fresh directory: nothing to restore): the SIGTERM test reads the last.
        d.start("--models", "noop=noop.mar", "sleep=sleep.mar", wait=False, ncs=False)
        ready_at = listener.wait_for("READY=1", timeout=90)
        # Right at READY, before anything else had a chance to warm up.
        at_ready = d.infer("POST", "/predictions/noop", data=b"x", timeout=10)
        d.track_descendants()
        yield SimpleNamespace(daemon=d, listener=listener, ready_at=ready_at,
                              at_ready=at_ready)
    finally:
        d.cleanup()
        listener.close()


def test_ready_once_listeners_serve_and_startup_models_are_loaded(notified):
    assert notified.at_ready.status_code == 200, notified.at_ready.text
    assert notified.at_ready.json() == {"ok": 1}
    lines = notified.listener.lines()
    ready = lines.index("READY=1")
    assert lines.index("STATUS=loading startup model noop.mar (1/2)") < \
        lines.index("STATUS=loading startup model sleep.mar (2/2)") < ready
    # Each startup model may take default_startup_timeout (120 s) + 30 s of systemd's start time.
    assert lines[:ready].count("EXTEND_TIMEOUT_USEC=150000000") == 2
    assert lines[ready + 1] == "STATUS=serving 2 model version(s) with 3 READY worker(s)"


def test_startup_models_are_marked_and_get_their_workers(notified):
    d = notified.daemon
    [noop] = d.describe("noop")
    assert noop["loadedAtStartup"] is True
    assert noop["minWorkers"] == 2 and [w["status"] for w in noop["workers"]] == ["READY"] * 2
    [sleep] = d.describe("sleep")
    assert sleep["loadedAtStartup"] is True
    assert (sleep["minWorkers"], sleep["maxWorkers"], len(sleep["workers"])) == (1, 1, 1)


def test_watchdog_pings_every_half_timeout(notified):
    listener = notified.listener
    start = listener.wait_for("WATCHDOG=1", after=time.monotonic())
    listener.wait_for("WATCHDOG=1", timeout=10, after=start, count=3)
    pings = listener.arrivals("WATCHDOG=1", after=start)
    assert len(pings) >= 3, pings
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert all(0.3 <= gap <= 0.8 for gap in gaps), gaps   # WATCHDOG_USEC=1 s → every 0.5 s


def test_sigterm_says_stopping_drains_in_flight_and_exits_zero(notified):
    d, listener = notified.daemon, notified.listener
    answers: list = []
    client = threading.Thread(target=lambda: answers.append(
        d.infer("POST", "/predictions/sleep", json={"sleep": 2}, timeout=30)))
    client.start()
    wait_taken(d, "sleep", 1)   # the request is at the worker
    descendants = d.track_descendants()
    assert descendants
    sent = time.monotonic()
    d.signal(signal.SIGTERM)
    assert listener.wait_for("STOPPING=1", timeout=5, after=sent) - sent < 1.0
    assert d.proc.wait(60) == 0
    client.join(30)
    assert answers and answers[0].status_code == 200, answers
    assert answers[0].json() == {"slept": 2.0}
    listener.wait_for("STATUS=draining", timeout=5, after=sent)   # sent before the exit
    _gone, alive = psutil.wait_procs(descendants, timeout=10)
    assert not alive, alive
    snapshots = sorted((d.workdir / "logs" / "config").glob("*.cfg"))
    assert snapshots and snapshots[-1].name.endswith("-shutdown.cfg")
    assert set(json.loads(snapshots[-1].read_text())["models"]) == {"noop", "sleep"}


# ---- the unit file ------------------------------------------------------------------------------

def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """systemd's syntax, enough for checks: sections of Key=Value lines (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"{line!r} before any section"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str) -> float:
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value))


def test_unit_file_runs_torchd_serve_as_a_notify_service():
    service = read_unit(UNIT)["Service"]
    one = {key: values[-1] for key, values in service.items()}
    assert one["Type"] == "notify"
    assert one["NotifyAccess"] == "main"
    argv = shlex.split(one["ExecStart"])
    assert Path(argv[0]).name == "torchd" and argv[1] == "serve"
    command, _args, _tokens = cli.parse_args(argv[1:])
    assert command == "serve"
    assert one["Restart"] == "on-failure"
    # Drain: in-flight HTTP (30 s) + workers finishing their batch (unregister_model_timeout,
    # 120 s by default) + the worker stop grace; systemd must not SIGKILL before that.
    assert 160 <= seconds(one["TimeoutStopSec"]) <= 600
    assert seconds(one["TimeoutStartSec"]) >= 120   # the default startup_timeout
    assert 10 <= seconds(one["WatchdogSec"]) <= 120
    assert one["KillMode"] == "mixed"   # SIGTERM to torchd alone: it stops its own workers


def test_unit_file_hardening():
    service = read_unit(UNIT)["Service"]
    one = {key: values[-1] for key, values in service.items()}
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "PrivateDevices",
                "ProtectKernelTunables", "ProtectKernelModules", "ProtectControlGroups",
                "RestrictSUIDSGID", "LockPersonality"):
        assert one.get(key) in ("yes", "true"), key
    assert one["ProtectSystem"] == "strict"
    writable = " ".join(service.get("ReadWritePaths", []))
    assert "/var/log/torchd" in writable and "/var/lib/torchd" in writable
    env = " ".join(service.get("Environment", []))
    assert "LOG_LOCATION=/var/log/torchd" in env
    assert one["User"] and one["User"] != "root"


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    # verify checks that ExecStart exists: point it at this checkout's torchd.
    torchd = Path(REPO / ".venv" / "bin" / "torchd")
    if not torchd.exists():
        pytest.skip(f"{torchd} is not installed")
    text = UNIT.read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    installed = shlex.split(exec_start.partition("=")[2])[0]
    unit = tmp_path / "torchd.service"
    unit.write_text(text.replace(installed, str(torchd)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "torchd.service" not in result.stderr, result.stderr   # no warnings about it
