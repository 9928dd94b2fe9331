"""GPU serving end to end on a machine without a GPU: the real daemon, with a fake ``pynvml``
(tests/support/fake_nvml) first on its path, finds two GPUs, places real workers on them, hands
each its gpu_id, checks deviceIds at register, and shows the GPUs in describe and /metrics.
Whether CUDA then works in the workers is for scripts/gpu-check on a real GPU."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import requests

from tests.support.daemon import REPO, Daemon
from tests.support.fake_nvml.pynvml import WORKER_GPU_MEMORY

FAKE_NVML = Path(__file__).resolve().parents[1] / "support" / "fake_nvml"
GPU_USAGE = re.compile(r"gpuId::(\d+) utilization\.gpu \[%\]::5 % utilization\.memory \[%\]::1 % "
                       r"memory\.used \[MiB\]::612 MiB")
MODELS = {"pinned": {"1.0": {"deviceIds": [1]}}, "cpuonly": {"1.0": {"deviceType": "cpu"}},
          "nosuch": {"1.0": {"deviceIds": [0, 5]}}}


def fake_gpus(make_daemon, count: int = 2, **settings) -> Daemon:
    env = {"PYTHONPATH": f"{FAKE_NVML}:{REPO}", "FAKE_NVML_GPUS": str(count)}
    return make_daemon({"models": json.dumps(MODELS), **settings}, env=env)


def described_gpus(d: Daemon, name: str) -> list[int | None]:
    gpus = []
    for worker in d.workers(name):
        if not worker["gpu"]:
            assert worker["gpuUsage"] == "N/A" and "gpuMemoryUsage" not in worker
            gpus.append(None)
            continue
        gpus.append(int(GPU_USAGE.fullmatch(worker["gpuUsage"]).group(1)))
        assert worker["gpuMemoryUsage"] == WORKER_GPU_MEMORY
    return gpus


def gpu_ids_seen(d: Daemon, name: str, requests: int) -> set[int | None]:
    seen = set()
    for _ in range(requests):
        answer = d.infer("POST", f"/predictions/{name}", json={})
        assert answer.status_code == 200, answer.text
        seen.add(answer.json()["system_properties"]["gpu_id"])
    return seen


def test_workers_are_placed_on_the_gpus_nvml_reports(make_daemon):
    d = fake_gpus(make_daemon)
    assert "GPUs: 2 used: GPU 0 (NVIDIA H200 GPU-00000000" in d.log()
    assert d.register("echo.mar", initial_workers=3).status_code == 200
    assert d.register("echo.mar", model_name="pinned", initial_workers=2).status_code == 200
    assert d.register("echo.mar", model_name="cpuonly", initial_workers=1).status_code == 200
    d.track_descendants()
    assert described_gpus(d, "echo") == [0, 1, 0]
    assert described_gpus(d, "pinned") == [1, 1]            # deviceIds: [1]
    assert described_gpus(d, "cpuonly") == [None]           # deviceType: cpu
    assert gpu_ids_seen(d, "echo", 8) <= {0, 1}
    assert gpu_ids_seen(d, "pinned", 4) == {1}
    assert gpu_ids_seen(d, "cpuonly", 2) == {None}

    bad = d.register("echo.mar", model_name="nosuch", initial_workers=1)
    assert bad.status_code == 400
    assert bad.json()["message"] == ("deviceIds entry 5 of model nosuch names no GPU in use "
                                     "(GPUs: 0, 1)")
    assert d.mgmt("GET", "/models/nosuch").status_code == 404

    text = requests.get(d.url("metrics", "/metrics"), timeout=10).text
    for name in ("GPUUtilization", "GPUMemoryUtilization", "GPUMemoryUsed"):
        for device in ("0", "1"):
            assert re.search(rf'^{name}{{[^}}]*DeviceId="{device}"[^}}]*Level="Host"', text,
                             re.MULTILINE), (name, device)
    worker_series = re.findall(r'^torchd_worker_gpu_memory_bytes{[^}]*model_name="echo"[^}]*} '
                               r'(\S+)$', text, re.MULTILINE)
    assert [float(v) for v in worker_series] == [WORKER_GPU_MEMORY] * 3


def test_number_of_gpu_zero_serves_everything_on_the_cpu(make_daemon):
    d = fake_gpus(make_daemon, number_of_gpu=0)
    assert "GPUs: none used (number_of_gpu=0)" in d.log()
    assert d.register("echo.mar", model_name="pinned", initial_workers=2).status_code == 200
    d.track_descendants()
    assert described_gpus(d, "pinned") == [None, None]       # deviceIds ignored, warned
    assert "deviceIds [1] ignored: no GPU is in use" in d.log()
    assert gpu_ids_seen(d, "pinned", 2) == {None}
    text = requests.get(d.url("metrics", "/metrics"), timeout=10).text
    assert "GPUUtilization{" not in text


def test_a_startup_model_gets_a_worker_per_gpu(make_daemon):
    """Where neither its model-config.yaml, the models JSON nor default_workers_per_model says,
    a startup model gets one worker per GPU in use, as TorchServe (here 2 GPUs and 1 CPU).
    torchd gave it one per CPU: on a 16-core machine with one GPU, 16 CUDA workers on it."""
    env = {"PYTHONPATH": f"{FAKE_NVML}:{REPO}", "FAKE_NVML_GPUS": "2"}
    first = min(os.sched_getaffinity(0))   # one CPU: a worker per CPU would be one worker
    d = make_daemon({"load_models": "echo.mar"}, env=env,
                    preexec_fn=lambda: os.sched_setaffinity(0, {first}))
    d.wait_workers("echo", 2)
    d.track_descendants()
    assert described_gpus(d, "echo") == [0, 1]
