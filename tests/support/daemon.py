"""Run the real torchd daemon for tests: free loopback ports, its own dirs, cleanup by pid."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import psutil
import requests

from daemon.osutil import pid_gone
from tests.support.archives import copy_store
from tests.support.waiting import wait_until

TORCHD = [sys.executable, "-m", "daemon.ops.cli"]
REPO = Path(__file__).resolve().parents[2]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports: held together while chosen, since a port
    closed and asked for again may come back (5 in a row repeated one 14 times in 20,000 here,
    and a daemon then failed to bind its second listener)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class Daemon:
    """One `torchd serve` process. ``settings`` become config.properties lines."""

    def __init__(self, workdir: Path, model_store: Path, settings: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.model_store = model_store
        self.ports = dict(zip(("inference", "management", "metrics", "grpc_inference",
                               "grpc_management"), free_ports(5)))
        self.settings = {
            "inference_address": f"http://127.0.0.1:{self.ports['inference']}",
            "management_address": f"http://127.0.0.1:{self.ports['management']}",
            "metrics_address": f"http://127.0.0.1:{self.ports['metrics']}",
            "grpc_inference_address": f"127.0.0.1:{self.ports['grpc_inference']}",
            "grpc_management_address": f"127.0.0.1:{self.ports['grpc_management']}",
            "model_store": str(model_store), "log_location": str(workdir / "logs"),
            **(settings or {})}
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "torchd.log"
        self._known: dict[int, psutil.Process] = {}

    # ---- process -----------------------------------------------------------------------

    def write_config(self) -> Path:
        path = self.workdir / "config.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in self.settings.items()))
        return path

    def start(self, *args: str, ncs: bool = True, wait: bool = True,
              timeout: float = 60, preexec_fn: Any = None, command: str = "serve") -> Daemon:
        """``preexec_fn`` runs in the child before exec (e.g. to set its CPU affinity);
        ``command``: serve, or llm (which takes serve's options too)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [*TORCHD, command, "--ts-config", str(self.write_config()), *args]
        if ncs:
            cmd.append("--ncs")
        env = {**os.environ, "PYTHONPATH": str(REPO), **self.env}
        env.pop("TS_CONFIG_FILE", None)
        # inductor sets this in the test process once anything compiled there: a daemon that
        # inherited it would give its workers that cache, not each version's own
        if "TORCHINDUCTOR_CACHE_DIR" not in self.env:
            env.pop("TORCHINDUCTOR_CACHE_DIR", None)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=preexec_fn)
        self._known[self.proc.pid] = psutil.Process(self.proc.pid)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        """Until the management API answers; RuntimeError at once if torchd exits first."""
        wait_until(self._listening, timeout, 0.1,
                   lambda: f"torchd listening\n{self.log(20000)}\n")
        self.track_descendants()

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"torchd exited with {self.proc.returncode}:\n{self.log(20000)}")
        try:
            requests.get(self.url("management", "/models"), timeout=1)
        except requests.ConnectionError:
            return False
        return True

    @property
    def pid(self) -> int:
        return self.proc.pid

    def track_descendants(self) -> list[psutil.Process]:
        """Remember every descendant so cleanup can kill it by pid even after re-parenting."""
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for child in children:
            self._known.setdefault(child.pid, child)
        return children

    def signal(self, sig: int) -> None:
        self.track_descendants()
        os.kill(self.pid, sig)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait: the daemon's own graceful shutdown."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the daemon alone (its workers must notice and exit by themselves)."""
        self.signal(signal.SIGKILL)
        self.proc.wait(10)

    def failed_start_log(self, *args: str, timeout: float = 60) -> str:
        """Start with ``args``, expect the start to fail (exit status 1), clean up, and give
        the log."""
        try:
            self.start(*args, wait=False)
            assert self.proc is not None and self.proc.wait(timeout) == 1, self.log(5000)
        finally:
            self.cleanup()
        return self.log()

    def cleanup(self) -> None:
        """Kill everything this daemon ever started, by pid."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.stop(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        for proc in list(self._known.values()):
            try:
                if proc.is_running():
                    proc.kill()
            except psutil.NoSuchProcess:
                pass
        if self.proc is not None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        if getattr(self, "_log", None):
            self._log.close()

    def log(self, tail: int | None = None) -> str:
        """The daemon's whole log (``tail``: only its last characters, for error messages)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-tail:] if tail else text

    # ---- HTTP ----------------------------------------------------------------------------

    def url(self, api: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[api]}{path}"

    def mgmt(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 120)
        return requests.request(method, self.url("management", path), **kwargs)

    def infer(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 120)
        return requests.request(method, self.url("inference", path), **kwargs)

    def register(self, url: str, **params: Any) -> requests.Response:
        params = {"url": url, "synchronous": "true", **params}
        response = self.mgmt("POST", "/models", params=params)
        self.track_descendants()
        return response

    def unregister(self, name: str, version: str | None = None) -> requests.Response:
        path = f"/models/{name}" + (f"/{version}" if version else "")
        return self.mgmt("DELETE", path)

    def describe(self, name: str, version: str | None = None) -> list[dict[str, Any]]:
        path = f"/models/{name}" + (f"/{version}" if version else "")
        response = self.mgmt("GET", path)
        response.raise_for_status()
        return response.json()

    def workers(self, name: str, version: str | None = None) -> list[dict[str, Any]]:
        return self.describe(name, version)[0]["workers"]

    def wait_workers(self, name: str, count: int, status: str = "READY",
                     version: str | None = None, timeout: float = 60) -> list[dict[str, Any]]:
        """The workers (all of them) once exactly ``count`` are in ``status``. READY ones must
        also be alive: a killed worker reads READY until the daemon has seen it go."""
        def settled() -> tuple[list[dict[str, Any]]] | None:   # a tuple: [] is an answer too
            workers = self.workers(name, version)
            matching = [w for w in workers if w["status"] == status]
            if status == "READY" and any(pid_gone(w["pid"]) for w in matching):
                return None
            return (workers,) if len(matching) == count else None

        (workers,) = wait_until(settled, timeout, 0.1,
                                lambda: f"{name}: {count} {status} worker(s) "
                                        f"(have {self.workers(name, version)})")
        self.track_descendants()
        return workers


@contextlib.contextmanager
def running_daemon(archive_dir: Path, workdir: Path,
                   settings: dict[str, Any] | None = None) -> Iterator[Daemon]:
    """A started daemon serving a copy of the test archives; every process it started is gone
    afterwards (also when it fails to start)."""
    daemon = Daemon(workdir, copy_store(archive_dir, workdir / "store"), settings)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.cleanup()
