"""The servers under test: start, manage, measure and stop torchd and TorchServe."""
from __future__ import annotations

import abc
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from . import BenchError, tail

READY_TIMEOUT = 120.0
MANAGEMENT_TIMEOUT = 300.0
SETTLE_S = 1.0
UNREGISTER_ATTEMPTS = 5


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# ---------------------------------------------------------------- HTTP

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxies


def http(method: str, url: str, body: bytes | None = None,
         timeout: float = MANAGEMENT_TIMEOUT) -> tuple[int, str, float]:
    """One request; returns (status, body text, wall seconds of the whole call)."""
    # Management calls carry their parameters in the query and no body: TorchServe parses a body
    # sent as application/json as the register request, so only predictions get that type.
    headers = {"Content-Type": "application/json"} if body else {}
    if body is None and method in ("POST", "PUT"):
        body = b""
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    started = time.perf_counter()
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            status, text = response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode(errors="replace")
    return status, text, time.perf_counter() - started


# ---------------------------------------------------------------- servers

class Server(abc.ABC):
    """One server under test: its own dir, config, model store, logs and process group."""

    name = ""
    label = ""

    def __init__(self, workdir: Path, archives: dict[str, Path]) -> None:
        self.dir = workdir / self.name
        self.store = self.dir / "model-store"
        self.store.mkdir(parents=True)
        for archive in archives.values():
            shutil.copy2(archive, self.store / archive.name)
        ports = free_ports(5)
        self.inference = f"http://127.0.0.1:{ports[0]}"
        self.management = f"http://127.0.0.1:{ports[1]}"
        self.metrics = f"http://127.0.0.1:{ports[2]}"
        # both servers serve gRPC by default, on 7070/7071: free ports keep them apart
        self.grpc_inference_port, self.grpc_management_port = ports[3], ports[4]
        self.config = self.dir / "config.properties"
        self.log = self.dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_s = 0.0
        self.seen: dict[int, psutil.Process] = {}

    @abc.abstractmethod
    def command(self) -> list[str]:
        """How to start this server in the foreground."""

    def extra_env(self) -> dict[str, str]:
        return {}

    @abc.abstractmethod
    def frontend(self) -> psutil.Process:
        """The process that answers HTTP."""

    @abc.abstractmethod
    def worker_pids(self, model: str) -> list[int]:
        """The pids of ``model``'s worker processes."""

    def write_config(self) -> None:
        self.config.write_text("\n".join([
            f"inference_address={self.inference}",
            f"management_address={self.management}",
            f"metrics_address={self.metrics}",
            f"grpc_inference_port={self.grpc_inference_port}",
            f"grpc_management_port={self.grpc_management_port}",
            f"model_store={self.store}",
            "default_workers_per_model=2",
            "disable_token_authorization=true",
            "enable_model_api=true",
        ]) + "\n")

    def start(self) -> None:
        self.write_config()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TS_")}
        env.update(LOG_LOCATION=str(self.dir / "logs"), METRICS_LOCATION=str(self.dir / "logs"))
        env.update(self.extra_env())
        started = time.perf_counter()
        with self.log.open("wb") as log:
            # A new session: the whole tree can be killed by process group, and Ctrl-C in the
            # terminal reaches only the driver, which then stops the servers itself.
            self.proc = subprocess.Popen(self.command(), cwd=self.dir, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_ready(started)
        self.start_s = time.perf_counter() - started

    def wait_ready(self, started: float) -> None:
        while time.perf_counter() - started < READY_TIMEOUT:
            if self.proc is not None and self.proc.poll() is not None:
                raise BenchError(f"{self.label} exited ({self.proc.returncode}):\n{tail(self.log)}")
            with contextlib.suppress(OSError):
                if http("GET", f"{self.management}/models", timeout=5)[0] == 200:
                    return
            time.sleep(0.2)
        raise BenchError(f"{self.label} not ready after {READY_TIMEOUT:.0f} s:\n{tail(self.log)}")

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL it and every process of the tree by pid."""
        if self.proc is None:
            return
        tree = self.remember(process_tree(self.proc.pid))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        # Anything of the tree that left the group (or was seen earlier and outlived it) goes
        # by pid; psutil refuses to signal a pid that was reused since it was seen.
        leftovers = [p for p in {*tree, *self.seen.values()} if p.is_running()]
        for proc in leftovers:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(leftovers, timeout=10)
        self.proc = None

    def remember(self, procs: list[psutil.Process]) -> list[psutil.Process]:
        """Note server processes, so stop() can make sure each one is gone."""
        for proc in procs:
            self.seen.setdefault(proc.pid, proc)
        return procs

    def tree(self) -> list[psutil.Process]:
        return self.remember(process_tree(self.proc.pid)) if self.proc else []

    # management calls; each returns the wall time of the HTTP call
    def manage(self, method: str, path: str, expect: tuple[int, ...] = (200,)) -> float:
        status, text, seconds = http(method, f"{self.management}{path}")
        if status not in expect:
            raise BenchError(f"{self.label}: {method} {path} -> {status} {text.strip()}")
        return seconds

    def register(self, model: str, workers: int, batch_size: int = 1,
                 max_batch_delay: int = 100) -> float:
        return self.manage("POST", f"/models?url={model}.mar&model_name={model}"
                                   f"&initial_workers={workers}&synchronous=true"
                                   f"&batch_size={batch_size}&max_batch_delay={max_batch_delay}")

    def scale(self, model: str, workers: int) -> float:
        return self.manage("PUT", f"/models/{model}?min_worker={workers}&max_worker={workers}"
                                  "&synchronous=true")

    def idle_gap_ms(self, model: str) -> float | None:
        """The mean gap between a worker's result and its next batch at saturation, where the
        server reports one (torchd: torchd_worker_idle_gap_seconds)."""
        return None

    def redispatched(self, model: str) -> float | None:
        """Requests run again after their worker died, where the server does that (torchd)."""
        return None

    def ready_worker_pids(self, model: str) -> list[int]:
        """Pids of ``model``'s READY workers, from describe (both servers give status and pid)."""
        return [int(w["pid"]) for w in self.described_workers(model)
                if w.get("status") == "READY" and int(w.get("pid") or -1) > 0]

    def described_workers(self, model: str) -> list[dict[str, Any]]:
        status, text, _ = http("GET", f"{self.management}/models/{model}")
        if status != 200:
            raise BenchError(f"{self.label}: describe {model} -> {status} {text.strip()}")
        return json.loads(text)[0]["workers"]

    def unregister(self, model: str) -> None:
        pids = self.worker_pids(model)
        for _ in range(UNREGISTER_ATTEMPTS):
            status, text, _ = http("DELETE", f"{self.management}/models/{model}?synchronous=true")
            if status == 200:
                break
            # TorchServe 0.12 can answer 500 ConcurrentModificationException while it still
            # serves requests that wrk left in flight; the same call succeeds a moment later.
            print(f"  note: {self.label} DELETE /models/{model} -> {status} "
                  f"{' '.join(text.split())[:120]}; retrying", flush=True)
            time.sleep(SETTLE_S)
        else:
            raise BenchError(f"{self.label}: could not unregister {model} after "
                             f"{UNREGISTER_ATTEMPTS} attempts")
        # Let the old workers exit before the next measurement starts.
        _gone, alive = psutil.wait_procs(live_processes(pids), timeout=30)
        if alive:
            print(f"  warning: {self.label} workers still alive after unregister: "
                  f"{[p.pid for p in alive]}", flush=True)


class TorchServe(Server):
    name, label = "torchserve", "TorchServe"

    def __init__(self, workdir: Path, archives: dict[str, Path], venv: Path) -> None:
        self.venv = venv
        super().__init__(workdir, archives)

    def command(self) -> list[str]:
        return [str(self.venv / "bin" / "torchserve"), "--start", "--foreground", "--ncs",
                "--model-store", str(self.store), "--ts-config", str(self.config)]

    def extra_env(self) -> dict[str, str]:
        # Workers run `python3` from PATH: make it the TorchServe venv's. Its workers share
        # inductor's cache (as they share /tmp/torchinductor_<user> by default); a directory of
        # its own lets the compiled round empty it, so every round compiles cold on both servers.
        return {"PATH": f"{self.venv / 'bin'}:{os.environ.get('PATH', '')}",
                "VIRTUAL_ENV": str(self.venv),
                "TORCHINDUCTOR_CACHE_DIR": str(self.inductor_cache)}

    @property
    def inductor_cache(self) -> Path:
        return self.dir / "inductor-cache"

    def frontend(self) -> psutil.Process:
        for proc in process_tree(self.proc.pid if self.proc else -1):
            with contextlib.suppress(psutil.Error):
                if proc.name() == "java":
                    return proc
        raise BenchError("TorchServe's java frontend not found")

    def worker_pids(self, model: str) -> list[int]:
        # One model is registered at a time, so every Python child of the JVM is its worker.
        pids = []
        for child in self.frontend().children():
            with contextlib.suppress(psutil.Error):
                if any("model_service_worker" in part for part in child.cmdline()):
                    pids.append(child.pid)
        return pids


class Torchd(Server):
    name, label = "torchd", "torchd"

    def __init__(self, workdir: Path, archives: dict[str, Path], executable: Path,
                 source: Path | None = None) -> None:
        self.executable = executable
        self.source = source
        super().__init__(workdir, archives)

    def command(self) -> list[str]:
        return [str(self.executable), "serve", "--model-store", str(self.store),
                "--ts-config", str(self.config), "--ncs"]

    def extra_env(self) -> dict[str, str]:
        # The repo venv's torchd is an editable install of the checkout that made the venv: a
        # git worktree sharing that venv would bench the other checkout's code. Put this
        # checkout first on the path (daemon, zygote and workers inherit it).
        if self.source is None:
            return {}
        path = os.environ.get("PYTHONPATH")
        return {"PYTHONPATH": f"{self.source}:{path}" if path else str(self.source)}

    def frontend(self) -> psutil.Process:
        if self.proc is None:
            raise BenchError("torchd is not running")
        return psutil.Process(self.proc.pid)

    def idle_gap_ms(self, model: str) -> float | None:
        sums = self._samples(model, "torchd_worker_idle_gap_seconds_sum",
                             "torchd_worker_idle_gap_seconds_count")
        if not sums.get("torchd_worker_idle_gap_seconds_count"):
            return None
        return (sums["torchd_worker_idle_gap_seconds_sum"]
                / sums["torchd_worker_idle_gap_seconds_count"] * 1000)

    def redispatched(self, model: str) -> float | None:
        name = "torchd_redispatched_requests_total"
        return self._samples(model, name).get(name, 0.0)

    def _samples(self, model: str, *names: str) -> dict[str, float]:
        """The values of the named series of ``model`` on /metrics, summed over other labels."""
        status, text, _ = http("GET", f"{self.metrics}/metrics")
        if status != 200:
            raise BenchError(f"torchd: GET /metrics -> {status}")
        found: dict[str, float] = {}
        for line in text.splitlines():
            name, _, rest = line.partition("{")
            if name in names and f'model_name="{model}"' in rest:
                found[name] = found.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        return found

    def worker_pids(self, model: str) -> list[int]:
        return [int(w["pid"]) for w in self.described_workers(model) if w.get("pid")]


def process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def live_processes(pids: list[int]) -> list[psutil.Process]:
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    return procs
