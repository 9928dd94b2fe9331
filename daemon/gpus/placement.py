"""Which GPU a worker runs on, and what the workers' GPUs report (describe, metrics).

TorchServe hands GPUs out round-robin over every worker it ever started, so a scale-down then a
scale-up can pile workers onto one GPU. torchd places a new worker on the permitted GPU with the
fewest live workers (starting, ready or restarting, of every model) and gives a worker that
replaces a dead one its slot's GPU (``SlotHistory.gpu``, chosen when the slot was opened).
A model's ``deviceType: cpu`` (model-config.yaml) gives its workers no GPU; ``deviceIds`` limits
the choice to those GPUs, as in TorchServe. No GPU at all: every worker gets None, the CPU.

``permitted`` and ``place`` are the policy, pure; ``GpuPlacement`` applies it to the
Supervisor's worker table (read, never written, through ``PlacedWorker``) and the GPU inventory.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from daemon.gpus.inventory import MIB, GpuInventory, GpuUsage
from daemon.models.registry import ModelVersion

logger = logging.getLogger(__name__)
CPU_FIELDS = {"gpu": False, "gpuUsage": "N/A"}


def permitted(usable: Iterable[int], device_type: str | None,
              device_ids: Sequence[int]) -> list[int]:
    """The GPUs a model's worker may use: none for deviceType cpu, else the usable ones (those
    of ``device_ids`` when it names any, in its order)."""
    if device_type == "cpu":
        return []
    usable = list(usable)
    return [gpu for gpu in device_ids if gpu in usable] if device_ids else usable


def place(allowed: Sequence[int], load: Mapping[int, int]) -> int | None:
    """The allowed GPU with the fewest workers (``load``: workers per GPU); ties go to the
    first in ``allowed``. None: no GPU allowed, the CPU."""
    if not allowed:
        return None
    return min(enumerate(allowed), key=lambda item: (load.get(item[1], 0), item[0]))[1]


def usage_text(gpu_id: int, usage: GpuUsage | None) -> str:
    """describe's ``gpuUsage``, as TorchServe writes it (from nvidia-smi's CSV headers)."""
    if usage is None:
        return "N/A"
    return (f"gpuId::{gpu_id} utilization.gpu [%]::{usage.utilization} % "
            f"utilization.memory [%]::{usage.memory_utilization} % "
            f"memory.used [MiB]::{usage.memory_used // MIB} MiB")


class PlacedWorker(Protocol):
    """What placement reads of a worker: daemon/workers/handle.py's WorkerHandle."""

    @property
    def id(self) -> str: ...
    @property
    def mv(self) -> ModelVersion: ...
    @property
    def gpu(self) -> int | None: ...
    @property
    def pid(self) -> int | None: ...
    @property
    def live(self) -> bool:
        """Starting, ready or restarting: it holds its GPU."""


class GpuPlacement:
    def __init__(self, inventory: GpuInventory, workers: Mapping[str, PlacedWorker]) -> None:
        self.inventory = inventory
        self.workers = workers          # the Supervisor's table, read only

    def load(self) -> dict[int, int]:
        """Live workers (of every model) per GPU."""
        counts: dict[int, int] = {}
        for handle in self.workers.values():
            if handle.gpu is not None and handle.live:
                counts[handle.gpu] = counts.get(handle.gpu, 0) + 1
        return counts

    def choose(self, mv: ModelVersion) -> int | None:
        """The GPU for a worker of ``mv`` in a new slot (None: the CPU)."""
        settings = mv.settings
        allowed = permitted(self.inventory.usable(), settings.device_type, settings.device_ids)
        if not allowed and settings.device_type != "cpu" and self.inventory.ids:
            logger.warning("no usable GPU left for %s %s (deviceIds %s): its new worker runs "
                           "on the CPU", mv.name, mv.version, list(settings.device_ids) or "any")
        return place(allowed, self.load())

    def on_gpu(self, mv: ModelVersion) -> bool:
        """Whether new workers of ``mv`` would be placed on a GPU."""
        settings = mv.settings
        return bool(permitted(self.inventory.usable(), settings.device_type,
                              settings.device_ids))

    def vanished(self, handle: PlacedWorker, error: str) -> str | None:
        """For a worker that failed or died: the cause, naming its GPU, when that GPU is no
        longer there (NVML asked again now); None when it still is (or it had none)."""
        if handle.gpu is None or self.inventory.present(handle.gpu):
            return None
        return f"{self.inventory.describe(handle.gpu)} is no longer present: {error}"

    def describe(self, handle: PlacedWorker) -> dict[str, Any]:
        """describe's GPU fields of a worker: ``gpu``, ``gpuUsage`` and, where NVML reports the
        worker's own use, ``gpuMemoryUsage`` (bytes)."""
        if handle.gpu is None:
            return dict(CPU_FIELDS)
        fields: dict[str, Any] = {
            "gpu": True, "gpuUsage": usage_text(handle.gpu, self.inventory.usage(handle.gpu))}
        if handle.pid is not None:
            memory = self.inventory.process_memory(handle.gpu).get(handle.pid)
            if memory is not None:
                fields["gpuMemoryUsage"] = memory
        return fields

    def publish(self, metrics: Any, devices: bool = True) -> None:
        """Per-device gauges (TorchServe's system metrics, unless not ``devices``) and each GPU
        worker's own GPU memory (torchd's), refreshed at scrape time."""
        per_process: dict[int, dict[int, int]] = {}
        for gpu_id in self.inventory.ids:
            usage = self.inventory.usage(gpu_id)
            if usage is None or not devices:
                metrics.forget_gpu(gpu_id)
                if usage is None:
                    continue
            else:
                metrics.set_gpu_usage(gpu_id, usage.utilization, usage.memory_used_percent,
                                      usage.memory_used / MIB)
            per_process[gpu_id] = self.inventory.process_memory(gpu_id)
        for handle in list(self.workers.values()):
            used = per_process.get(handle.gpu, {}).get(handle.pid) \
                if handle.gpu is not None and handle.pid is not None else None
            if used is not None:
                metrics.set_worker_gpu_memory(handle.mv.name, handle.mv.version, handle.id, used)
