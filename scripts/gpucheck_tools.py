"""gpu-check's tools: torchd on loopback, the report, closed-loop HTTP load from client
processes, NVML samples."""
from __future__ import annotations

import http.client
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchlib.servers import free_ports


class Torchd:
    """``torchd serve`` in the foreground on free loopback ports, its output in torchd.log;
    ``settings`` are more config.properties keys, ``env`` more environment variables."""

    def __init__(self, workdir: Path, store: Path, settings: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.dir = workdir
        self.ports = free_ports(5)
        config = workdir / "config.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in {
            "inference_address": f"http://127.0.0.1:{self.ports[0]}",
            "management_address": f"http://127.0.0.1:{self.ports[1]}",
            "metrics_address": f"http://127.0.0.1:{self.ports[2]}",
            "grpc_inference_port": self.ports[3], "grpc_management_port": self.ports[4],
            "model_store": str(store), "log_location": str(workdir / "logs"),
            "job_queue_size": 1000,    # gpu-check's RESNET_CONNS wait in the queue at once
            **(settings or {})}.items()))
        self.log = workdir / "torchd.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon.ops.cli", "serve", "--ts-config", str(config),
                 "--ncs"], cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env={**os.environ, **(env or {})})
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"torchd exited:\n{self.log.read_text()[-3000:]}")
            try:
                self.manage("GET", "/models")
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("torchd did not start in 180 s")

    url = staticmethod(lambda port, path: f"http://127.0.0.1:{port}{path}")

    def manage(self, method: str, path: str):
        request = urllib.request.Request(self.url(self.ports[1], path), method=method)
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.loads(response.read() or b"null")

    def infer(self, model: str, body: bytes, ctype: str) -> tuple[int, dict]:
        request = urllib.request.Request(self.url(self.ports[0], f"/predictions/{model}"),
                                         data=body, headers={"Content-Type": ctype})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url(self.ports[2], "/metrics"), timeout=60) as r:
            return r.read().decode()

    def workers(self, model: str) -> list[dict]:
        return self.manage("GET", f"/models/{model}")[0]["workers"]

    def scale(self, model: str, count: int) -> None:
        self.manage("PUT", f"/models/{model}?min_worker={count}&max_worker={count}"
                           "&synchronous=true")

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def zygote_pid(self) -> int | None:
        import psutil
        for child in psutil.Process(self.proc.pid).children():
            if "zygote" in " ".join(child.cmdline()):
                return child.pid
        return None

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


class Report:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []
        self.data: dict[str, object] = {}

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.rows.append((name, "ok" if ok else "FAIL", detail))
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)

    def info(self, name: str, detail: str) -> None:
        self.rows.append((name, "-", detail))
        print(f"     {name}: {detail}", flush=True)

    @property
    def failed(self) -> bool:
        return any(result == "FAIL" for _, result, _ in self.rows)

    def finish(self, out: Path) -> int:
        """The table on stdout, rows and data as JSON in ``out``; the exit status."""
        width = max((len(name) for name, _, _ in self.rows), default=5)
        print(f"\n{'check':<{width}}  result  detail")
        for name, result, detail in self.rows:
            print(f"{name:<{width}}  {result:<6}  {detail}")
        out.write_text(json.dumps({"rows": self.rows, "data": self.data}, indent=1,
                                  default=str))
        return 1 if self.failed else 0


def run_steps(title: str, d: Torchd, report: Report, out: Path, steps: Callable[[], None],
              work: Path | None = None) -> None:
    """Run ``steps`` against ``d``: a step that breaks is a failed check, reported with the
    rest. Then torchd stops, its log is kept beside ``out``, and ``work`` is removed."""
    try:
        steps()
    except Exception as exc:
        report.check(f"{title} ran to the end", False, f"{type(exc).__name__}: {exc}")
    finally:
        d.stop()
        shutil.copy2(d.log, out.with_suffix(".torchd.log"))
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


def _client(port: int, path: str, body: bytes, ctype: str, seconds: float, threads: int,
            results: mp.Queue) -> None:
    counts: list[int] = []

    def loop() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        done, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            conn.request("POST", path, body=body, headers={"Content-Type": ctype})
            response = conn.getresponse()
            response.read()
            done += response.status == 200
        counts.append(done)

    pool = [threading.Thread(target=loop) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    results.put(sum(counts))


def load(d: Any, model: str, body: bytes, ctype: str, conns: int,
         seconds: float) -> dict[str, float]:
    """``conns`` keep-alive connections from up to 8 client processes for ``seconds``."""
    procs = min(conns, 8)
    results: mp.Queue = mp.Queue()
    clients = [mp.Process(target=_client, args=(d.ports[0], f"/predictions/{model}", body,
                                                ctype, seconds, conns // procs, results))
               for _ in range(procs)]
    cpu, started = d.cpu_seconds(), time.perf_counter()
    for client in clients:
        client.start()
    done = sum(results.get() for _ in clients)
    for client in clients:
        client.join()
    wall, cpu = time.perf_counter() - started, d.cpu_seconds() - cpu
    return {"rps": done / seconds, "daemon_cpu_percent": 100 * cpu / wall,
            "daemon_us_per_request": cpu / max(done, 1) * 1e6}


def idle_gap_ms(text: str, model: str) -> float | None:
    values: dict[str, float] = {}
    for part in ("sum", "count"):
        match = re.search(rf'^torchd_worker_idle_gap_seconds_{part}{{[^}}]*model_name="{model}"'
                          rf'[^}}]*}} (\S+)$', text, re.M)
        if match:
            values[part] = float(match.group(1))
    return values["sum"] / values["count"] * 1e3 if values.get("count") else None


class GpuBusy(threading.Thread):
    """NVML's utilization.gpu of device 0, sampled every 0.5 s while a load runs."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        import pynvml
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        while not self.done.wait(0.5):
            self.samples.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        pynvml.nvmlShutdown()

    def start(self) -> GpuBusy:
        super().start()
        return self

    def stop(self) -> float:
        self.done.set()
        self.join()
        return sum(self.samples) / max(len(self.samples), 1)


def nvml_pids() -> set[int]:
    import pynvml
    pynvml.nvmlInit()
    try:
        pids = set()
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            pids |= {p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)}
        return pids
    finally:
        pynvml.nvmlShutdown()
