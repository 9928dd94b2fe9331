"""`torchd start` with startup models: it returns once the daemon listens, and the daemon
listens only once its startup models are loaded, so a script can predict right after `start`.
(start/status/stop and the refused second start are in tests/daemon/test_cli.py.)"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import requests

from daemon import pidfile
from tests.integration.test_ops_support import make_store
from tests.support.daemon import free_port


def torchd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TS_") and k not in ("LOG_LOCATION", "NOTIFY_SOCKET")}
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=90, check=False)


def kill_tree(pid: int | None) -> None:
    if pid is None:
        return
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def test_start_returns_with_startup_models_serving(archive_dir: Path, tmp_path: Path):
    ports = {name: free_port() for name in ("inference", "management", "metrics")}
    make_store(archive_dir, tmp_path / "store", ["noop"])
    (tmp_path / "config.properties").write_text(
        "".join(f"{name}_address=http://127.0.0.1:{port}\n" for name, port in ports.items())
        + "model_store=store\nworker_spawn=exec\ndefault_workers_per_model=1\n")
    pid_path = tmp_path / "logs" / "torchd.pid"
    try:
        started = torchd("start", "--models", "noop=noop.mar", "--ncs", cwd=tmp_path)
        assert started.returncode == 0, started.stdout + started.stderr
        predicted = requests.post(f"http://127.0.0.1:{ports['inference']}/predictions/noop",
                                  data=b"x", timeout=30)
        assert predicted.status_code == 200 and predicted.json() == {"ok": 1}
        pid = pidfile.read_pid(pid_path)
        assert f"torchd started (pid {pid})" in started.stdout

        stopped = torchd("stop", cwd=tmp_path)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert pidfile.pid_gone(pid) and not pid_path.exists()
        log = (tmp_path / "logs" / "torchd.log").read_text()
        assert ('startup model noop.mar: Model "noop" Version: 1.0 registered with 1 initial '
                'workers') in log
        assert "torchd stopped" in log
    finally:
        kill_tree(pidfile.read_pid(pid_path))
