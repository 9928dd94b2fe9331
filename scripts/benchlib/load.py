"""Load with wrk, and how much CPU other processes took meanwhile."""
from __future__ import annotations

import contextlib
import json
import resource
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import psutil
from bench_models.image_handler import sample_body as image_body
from bench_models.make_mlp import sample_input

from . import BenchError
from .servers import SETTLE_S, Server

NOISY_CPU_PERCENT = 10.0


WRK_LUA = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[%s]==]

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH_JSON {"requests": %%.0f, "duration_us": %%.0f, ' ..
    '"connect": %%.0f, "read": %%.0f, "write": %%.0f, "status": %%.0f, "timeout": %%.0f, ' ..
    '"p50_us": %%.1f, "p90_us": %%.1f, "p99_us": %%.1f, "mean_us": %%.1f, "max_us": %%.1f}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
"""


class CpuMeter:
    """CPU used, while the meter runs, by processes other than the servers, wrk and this driver,
    as a percentage of all CPUs: other work on the machine skews every number, so say how much.
    """

    def __init__(self, servers: list[Server]) -> None:
        self.servers = servers
        self.percent = 0.0
        self._start = (0.0, 0.0, 0.0)

    def _ours(self) -> float:
        total = 0.0
        for server in self.servers:
            for proc in server.tree():
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    # children_*: short-lived helpers the server ran and reaped in the meantime
                    total += times.user + times.system + times.children_user + times.children_system
        # wrk (and any other finished child of the driver) and the driver itself
        for who in (resource.RUSAGE_CHILDREN, resource.RUSAGE_SELF):
            usage = resource.getrusage(who)
            total += usage.ru_utime + usage.ru_stime
        return total

    @staticmethod
    def _busy() -> float:
        times = psutil.cpu_times()
        return sum(times) - times.idle - getattr(times, "iowait", 0.0)

    def __enter__(self) -> Self:
        self._start = (time.perf_counter(), self._busy(), self._ours())
        return self

    def __exit__(self, *exc: object) -> None:
        wall0, busy0, ours0 = self._start
        used = (self._busy() - busy0) - (self._ours() - ours0)
        wall = max(time.perf_counter() - wall0, 1e-6)
        self.percent = max(0.0, 100.0 * used / (wall * (psutil.cpu_count() or 1)))


def idle_foreign_cpu(servers: list[Server], seconds: float = 1.0) -> float:
    with CpuMeter(servers) as meter:
        time.sleep(seconds)
    return meter.percent


@dataclass
class Load:
    """How long and how hard to push: one wrk run per measurement, after a warm-up run."""

    duration: int
    warmup: int
    scripts: dict[str, Path]
    servers: list[Server] = field(default_factory=list)  # for the CpuMeter

    def run(self, url: str, model: str, connections: int, seconds: int,
            timeout_s: int = 10) -> dict[str, float]:
        cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", f"{timeout_s}s",
               "-s", str(self.scripts[model]), url]
        done = subprocess.run(cmd, check=False, capture_output=True, text=True,
                              timeout=seconds + 60)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
        if done.returncode != 0 or line is None:
            raise BenchError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
        stats = json.loads(line.removeprefix("BENCH_JSON "))
        failed = sum(stats[k] for k in ("status", "timeout", "connect", "read", "write"))
        stats["rps"] = (stats["requests"] - stats["status"]) / (stats["duration_us"] / 1e6)
        stats["error_fraction"] = failed / max(stats["requests"], 1)
        if stats["error_fraction"] > 0.01:
            print(f"  warning: {failed} of {stats['requests']:.0f} requests failed "
                  f"({connections} conns, {url})", flush=True)
        return stats

    def measure(self, url: str, model: str, connections: int,
                frontend: psutil.Process | None = None) -> dict[str, float]:
        """One measured wrk run (after a warm-up run); with ``frontend``, also the CPU it
        used per request (``frontend_us``)."""
        if self.warmup:
            self.run(url, model, connections, self.warmup)
            # wrk exits with requests in flight; TorchServe still serves those for clients that
            # have gone, so let the queue drain before the measured run.
            time.sleep(SETTLE_S)
        before = _cpu_seconds(frontend)
        with CpuMeter(self.servers) as meter:
            stats = self.run(url, model, connections, self.duration)
        if frontend is not None:
            used = _cpu_seconds(frontend) - before
            stats["frontend_us"] = used / max(stats["requests"], 1) * 1e6
        time.sleep(SETTLE_S)   # as above: what follows (a management call) meets an idle server
        stats["foreign_cpu_percent"] = meter.percent
        if meter.percent > NOISY_CPU_PERCENT:
            print(f"  warning: other processes used {meter.percent:.0f}% of the CPUs during this "
                  "run", flush=True)
        return stats


def _cpu_seconds(process: psutil.Process | None) -> float:
    if process is None:
        return 0.0
    times = process.cpu_times()
    return times.user + times.system


def write_wrk_scripts(workdir: Path) -> dict[str, Path]:
    bodies = {"noop": "{}", "mlp": json.dumps(sample_input()), "image": image_body()}
    scripts = {}
    for model, body in bodies.items():
        scripts[model] = workdir / f"wrk-{model}.lua"
        scripts[model].write_text(WRK_LUA % body)
    return scripts
