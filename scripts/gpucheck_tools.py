"""gpu-check's tools: closed-loop HTTP load from client processes, NVML samples."""
from __future__ import annotations

import http.client
import multiprocessing as mp
import re
import threading
import time
from typing import Any


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
