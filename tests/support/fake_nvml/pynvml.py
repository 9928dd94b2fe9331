"""A stand-in for nvidia-ml-py's ``pynvml`` in a real daemon started by a test: put this folder
first on the daemon's PYTHONPATH. It reports ``FAKE_NVML_GPUS`` GPUs (default 2), with every
process below the daemon using 100 MiB on each (so each GPU worker finds itself listed)."""
from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import psutil

from daemon.gpus.inventory import MIB
from tests.support.gpus import FakeDevice, FakeNvml, NVMLError

WORKER_GPU_MEMORY = 100 * MIB


class _DescendantsOnEveryGpu(FakeNvml):
    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeDevice) -> list[SimpleNamespace]:
        self._device(handle)
        return [SimpleNamespace(pid=p.pid, usedGpuMemory=WORKER_GPU_MEMORY)
                for p in psutil.Process().children(recursive=True)]


_fake = _DescendantsOnEveryGpu(int(os.environ.get("FAKE_NVML_GPUS", "2")))
__all__ = ["NVMLError"]


def __getattr__(name: str) -> Any:
    return getattr(_fake, name)
