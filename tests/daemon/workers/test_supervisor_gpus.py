"""The Supervisor places workers on GPUs (an injected inventory over a fake NVML), tells each its
GPU in LOAD, shows it in describe and /metrics, and fails a worker whose GPU vanished.

Same fakes as test_supervisor.py: fake worker processes over real sockets, a fake clock.
"""
from __future__ import annotations

import asyncio
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.gpus.inventory import MIB
from daemon.models.registry import ModelVersion
from daemon.workers.states import WorkerState
from tests.daemon.workers.supervisor_harness import TEST_TIMEOUT, Harness, ready, scale, until
from tests.support.gpus import FakeNvml, fake_inventory

S = WorkerState


@pytest.fixture
def runtime_dir():
    path = Path(tempfile.mkdtemp(prefix="svg-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def on_gpus(count: int = 2, **discover: Any) -> Callable[..., Any]:
    """Run an async test body with a Harness whose Supervisor has ``count`` fake GPUs."""
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(runtime_dir: Path) -> None:
            async def main() -> None:
                inventory, nvml = fake_inventory(count, **discover)
                h = Harness(runtime_dir, gpus=inventory)
                try:
                    await fn(h, nvml)
                finally:
                    await h.sup.close(0)
            asyncio.run(asyncio.wait_for(main(), TEST_TIMEOUT))
        wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
        return wrapper
    return decorate


def gpus_of(h: Harness, mv: ModelVersion) -> list[int | None]:
    """Each worker's GPU, by worker id; and each asserted equal to what its LOAD said."""
    handles = sorted(h.sup.handles(mv), key=lambda x: int(x.id))
    for handle in handles:
        if handle.pid is not None and h.fake(handle).load is not None:
            assert h.fake(handle).load["gpu_id"] == handle.gpu
    return [handle.gpu for handle in handles]


def per_gpu(h: Harness) -> dict[int | None, int]:
    counts: dict[int | None, int] = {}
    for handle in h.sup.workers.values():
        counts[handle.gpu] = counts.get(handle.gpu, 0) + 1
    return counts


@on_gpus(2)
async def test_workers_spread_over_the_gpus_and_load_says_which(h: Harness, nvml: FakeNvml):
    mv = h.model()
    scale(h, mv, 3, 3)
    await ready(h, mv, 3)
    assert gpus_of(h, mv) == [0, 1, 0]
    assert all(w.load["gpu_id"] in (0, 1) for w in h.launcher.spawned)


@on_gpus(2)
async def test_every_model_counts_and_scale_down_then_up_stays_balanced(h, nvml):
    a, b = h.model("a"), h.model("b")
    scale(h, a, 2, 2)
    scale(h, b, 1, 1)
    await ready(h, a, 2)
    await ready(h, b, 1)
    assert (gpus_of(h, a), gpus_of(h, b)) == ([0, 1], [0])
    scale(h, a, 1, 1)                                   # a's newest (on GPU 1) stops
    await until(lambda: len(h.sup.handles(a)) == 1)
    assert per_gpu(h) == {0: 2}
    scale(h, b, 2, 2)                                   # round-robin would say GPU 1 ...
    scale(h, a, 2, 2)                                   # ... then GPU 0: three on GPU 0
    await ready(h, a, 2)
    await ready(h, b, 2)
    assert (gpus_of(h, a), gpus_of(h, b)) == ([0, 1], [0, 1])
    assert per_gpu(h) == {0: 2, 1: 2}


@on_gpus(2)
async def test_a_restarted_worker_keeps_its_gpu(h: Harness, nvml: FakeNvml):
    a, b = h.model("a"), h.model("b")
    scale(h, b, 2, 2)
    await ready(h, b, 2)
    scale(h, a, 1, 1)
    (worker,) = await ready(h, a, 1)
    assert worker.gpu == 0 and gpus_of(h, b) == [0, 1]
    h.fake(worker).kill(signal.SIGKILL)
    await until(lambda: worker.state is S.BACKOFF)
    scale(h, b, 1, 1)                                   # GPU 1 empties meanwhile
    await until(lambda: len(h.sup.handles(b)) == 1)
    h.sup.reconcile()
    (replacement,) = await ready(h, a, 1)
    assert replacement is not worker and replacement.slot == worker.slot
    assert gpus_of(h, a) == [0]                         # its slot's GPU, not the emptiest
    assert h.fake(replacement).load["gpu_id"] == 0


@on_gpus(3)
async def test_device_type_cpu_and_device_ids(h: Harness, nvml: FakeNvml):
    cpu = h.model("cpu", device_type="cpu")
    pinned = h.model("pinned", device_ids=(2, 1))
    scale(h, cpu, 2, 2)
    scale(h, pinned, 3, 3)
    await ready(h, cpu, 2)
    await ready(h, pinned, 3)
    assert gpus_of(h, cpu) == [None, None]
    assert gpus_of(h, pinned) == [2, 1, 2]              # never GPU 0, which stays empty
    assert [w["gpu"] for w in h.sup.describe_workers(cpu)] == [False, False]
    assert {w["gpuUsage"] for w in h.sup.describe_workers(cpu)} == {"N/A"}


@on_gpus(2, number_of_gpu=0)
async def test_number_of_gpu_zero_puts_every_worker_on_the_cpu(h: Harness, nvml: FakeNvml):
    mv = h.model()
    scale(h, mv, 2, 2)
    await ready(h, mv, 2)
    assert gpus_of(h, mv) == [None, None]
    assert [h.fake(x).load["gpu_id"] for x in h.sup.handles(mv)] == [None, None]


@on_gpus(2)
async def test_describe_shows_the_gpu_and_the_workers_own_gpu_memory(h, nvml):
    mv = h.model()
    scale(h, mv, 2, 2)
    first, second = await ready(h, mv, 2)
    nvml.devices[0].utilization = 42
    nvml.devices[0].processes = {first.pid: 700 * MIB}      # NVML lists only the first
    rows = h.sup.describe_workers(mv)
    assert rows[0]["gpu"] is True
    assert rows[0]["gpuUsage"] == ("gpuId::0 utilization.gpu [%]::42 % "
                                   "utilization.memory [%]::1 % memory.used [MiB]::612 MiB")
    assert rows[0]["gpuMemoryUsage"] == 700 * MIB
    assert rows[1]["gpuUsage"].startswith("gpuId::1 utilization.gpu [%]::5 % ")
    assert "gpuMemoryUsage" not in rows[1]
    assert list(rows[0]) == ["id", "startTime", "status", "memoryUsage", "pid", "gpu",
                             "gpuUsage", "gpuMemoryUsage", "threads"]


def gpu_sample(h: Harness, name: str, device: int) -> float | None:
    return h.metrics.registry.get_sample_value(
        name, {"Level": "Host", "DeviceId": str(device), "Hostname": "test"})


@on_gpus(2)
async def test_metrics_per_gpu_and_per_worker(h: Harness, nvml: FakeNvml):
    mv = h.model()
    scale(h, mv, 1, 1)
    (worker,) = await ready(h, mv, 1)
    nvml.devices[0].processes = {worker.pid: 900 * MIB}
    nvml.devices[1].utilization = 77
    h.sup.placement.publish(h.metrics)
    assert gpu_sample(h, "GPUUtilization", 0) == 5
    assert gpu_sample(h, "GPUUtilization", 1) == 77
    assert gpu_sample(h, "GPUMemoryUsed", 0) == 612
    assert gpu_sample(h, "GPUMemoryUtilization", 0) == pytest.approx(100 * 612 / 143771)
    labels = {"model_name": "m", "model_version": "1.0", "worker_id": worker.id}
    assert h.metrics.registry.get_sample_value("torchd_worker_gpu_memory_bytes",
                                               labels) == 900 * MIB
    text = h.metrics.render()[0].decode()
    assert 'GPUUtilization{DeviceId="1",Hostname="test",Level="Host"} 77.0' in text
    scale(h, mv, 0, 0)                                       # the worker's series go with it
    await until(lambda: not h.sup.handles(mv))
    assert h.metrics.registry.get_sample_value("torchd_worker_gpu_memory_bytes",
                                               labels) is None
    nvml.lose(1)                                             # and a vanished GPU's
    h.sup.placement.publish(h.metrics)
    assert gpu_sample(h, "GPUUtilization", 1) is None and gpu_sample(h, "GPUUtilization", 0)


@on_gpus(2)
async def test_a_worker_whose_gpu_vanished_fails_to_start_with_the_cause(h, nvml):
    mv = h.model()
    nvml.lose(0)                                 # gone, but the inventory does not know yet
    h.launcher.behaviour = "fail_load"
    scale(h, mv, 1, 1)
    (failed,) = await until(lambda: h.handles(mv, S.FAILED))   # at once, no backoff
    assert failed.gpu == 0 and len(h.launcher.spawned) == 1
    assert failed.last_error == (f"GPU 0 (NVIDIA H200 {nvml.devices[0].uuid}) is no longer "
                                 "present: ImportError: no handler")
    assert h.sup.describe_workers(mv)[0]["lastError"] == failed.last_error
    h.launcher.behaviour = "ok"
    scale(h, mv, 1, 1)                           # the next scale call places it elsewhere
    (fresh,) = await ready(h, mv, 1)
    assert fresh.gpu == 1


@on_gpus(2)
async def test_a_ready_worker_whose_gpu_vanished_is_failed_not_restarted(h, nvml):
    mv = h.model()
    scale(h, mv, 2, 2)
    on_0, on_1 = await ready(h, mv, 2)
    nvml.lose(1)
    h.fake(on_1).kill(signal.SIGKILL)
    await until(lambda: on_1.state is S.FAILED)
    assert on_1.last_error.startswith(f"GPU 1 (NVIDIA H200 {nvml.devices[1].uuid}) is no "
                                      "longer present: ")
    h.clock.advance(60)
    h.sup.reconcile()
    assert h.handles(mv, S.STARTING) == [] and on_0.state is S.READY
    assert not h.sup.healthy(mv)
    h.fake(on_0).kill(signal.SIGKILL)            # a crash on a GPU still there: restarted
    await until(lambda: on_0.state is S.BACKOFF)
