"""Helpers for the operations tests (tests/integration/test_ops_*.py): a test sd_notify socket,
stores, describe documents without their per-process fields, /metrics samples, the health script."""
from __future__ import annotations

import json

import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.archives import archive_source
from tests.support.daemon import REPO, Daemon
from tests.support.waiting import wait_until

HEALTH = REPO / "scripts" / "torchd-health"
# Per process, not per registration: they change on every restart.
VOLATILE_WORKER_KEYS = ("id", "pid", "startTime", "memoryUsage")


class NotifyListener:
    """An AF_UNIX datagram socket standing in for systemd's $NOTIFY_SOCKET; records every
    datagram with its arrival time (monotonic)."""

    def __init__(self) -> None:
        # A short path: pytest's tmp_path can exceed the 108-byte limit of a socket address.
        self._dir = tempfile.mkdtemp(prefix="tdn-", dir="/tmp")
        self.path = str(Path(self._dir) / "notify")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append((time.monotonic(), data.decode()))

    def arrivals(self, line: str, after: float = 0.0) -> list[float]:
        """The arrival times of the datagrams since ``after`` that hold ``line``."""
        with self._lock:
            return [at for at, text in self.messages
                    if at >= after and line in text.splitlines()]

    def wait_for(self, line: str, timeout: float = 60, after: float = 0.0,
                 count: int = 1) -> float:
        """The arrival time of the ``count``-th datagram since ``after`` holding ``line``."""
        times = wait_until(lambda: self.arrivals(line, after)[count - 1:], timeout,
                           what=lambda: f"{count} x {line!r} (have {self.lines()})")
        return times[0]

    def lines(self) -> list[str]:
        with self._lock:
            return [line for _, text in self.messages for line in text.splitlines()]

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def make_store(archive_dir: Path, dest: Path, names: list[str]) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy2(archive_dir / f"{name}.mar", dest / f"{name}.mar")
    return dest


def stable_describe(doc: dict[str, Any]) -> dict[str, Any]:
    """A describe document without what differs between two runs of the same registration."""
    out = dict(doc)
    out["workers"] = sorted(
        ({k: v for k, v in w.items() if k not in VOLATILE_WORKER_KEYS} for w in doc["workers"]),
        key=lambda w: sorted(w.items()))
    return out


def all_models(d: Daemon, headers: dict[str, str] | None = None) -> dict[str, list[dict]]:
    """Every model's `/models/{m}/all` documents (stable fields only), by model name."""
    names = [m["modelName"] for m in
             d.mgmt("GET", "/models", params={"limit": 100}, headers=headers).json()["models"]]
    return {name: [stable_describe(doc) for doc in
                   d.mgmt("GET", f"/models/{name}/all", headers=headers).json()]
            for name in names}


def scrape(d: Daemon) -> dict[tuple[str, frozenset], float]:
    """/metrics parsed by prometheus_client's parser: {(sample name, labels): value}."""
    response = requests.get(d.url("metrics", "/metrics"), timeout=10)
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def sample_sum(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    """The sum of every sample named ``name`` (or ``name_total``) whose labels include these."""
    want = set(labels.items())
    return sum(value for (sample, have), value in samples.items()
               if sample in (name, name + "_total") and want <= have)


def run_health(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HEALTH), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


# Loads instantly, unless the flag file exists: then a (re)start takes long enough to catch
# the model short of workers.
SLOW_HANDLER = textwrap.dedent("""
    import os
    import time


    def handle(data, context):
        if data is None:
            if os.path.exists(os.environ["OPS_SLOW_LOAD_FLAG"]):
                time.sleep(5)
            return None
        return [{"ok": 1} for _ in data]
""")


def build_slow_archive(out_dir: Path, src: Path) -> None:
    archive_source(SLOW_HANDLER, "slow", out_dir, src)


def file_log_config(path: Path, log_file: Path, fmt: str, loggers: dict | None = None) -> Path:
    """A ``--log-config`` file (logging's dictConfig, JSON) that sends every INFO line (and what
    ``loggers`` set lower) to ``log_file`` in format ``fmt``."""
    path.write_text(json.dumps({
        "version": 1,
        "formatters": {"plain": {"format": fmt}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(log_file),
                              "formatter": "plain"}},
        "loggers": {name: {"level": level} for name, level in (loggers or {}).items()},
        "root": {"level": "INFO", "handlers": ["file"]}}))
    return path
