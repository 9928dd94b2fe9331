"""The GPUs torchd may place workers on, found once at start through NVML, never through CUDA.

A process that has created a CUDA context cannot hand CUDA to the children it forks, and the
workers are forked from the zygote, started by the daemon: neither may touch CUDA. NVML (the
library behind nvidia-smi, through nvidia-ml-py's ``pynvml``) lists the devices and reports
their use without creating a context. No NVML (no driver, no library) or no device: zero GPUs,
said in one log line, and everything else works as on a CPU-only machine.

A GPU's ``id`` is the CUDA device ordinal a worker uses (``cuda:<id>``): its position among the
visible devices. Workers inherit the daemon's environment, so with ``CUDA_VISIBLE_DEVICES=2,3``
CUDA in a worker numbers NVML's devices 2 and 3 as 0 and 1, and so does this inventory; unset,
the ordinal is NVML's index. (CUDA orders devices fastest first unless
``CUDA_DEVICE_ORDER=PCI_BUS_ID``; NVML by PCI bus. The two agree for identical GPUs, the usual
serving machine; for mixed ones set CUDA_DEVICE_ORDER=PCI_BUS_ID.)
"""
from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)
MIB = 1024 * 1024
# NVML's answers that mean a device is gone: NOT_FOUND (its UUID is no longer listed),
# GPU_IS_LOST (fell off the bus), RESET_REQUIRED. Any other error may pass.
GONE_ERRORS = frozenset({6, 15, 16})


@dataclass(frozen=True)
class Gpu:
    id: int            # the CUDA ordinal a worker uses: cuda:<id>
    index: int         # NVML's (and nvidia-smi's) index
    uuid: str
    name: str


@dataclass(frozen=True)
class GpuUsage:
    """One device now, as NVML reports it."""

    utilization: int           # percent of time a kernel ran (nvidia-smi utilization.gpu)
    memory_utilization: int    # percent of time memory was read or written (utilization.memory)
    memory_used: int           # bytes
    memory_total: int          # bytes

    @property
    def memory_used_percent(self) -> float:
        return 100.0 * self.memory_used / self.memory_total if self.memory_total else 0.0


class GpuInventory:
    """The usable GPUs and NVML queries about them. Built by :func:`discover_gpus` at start;
    tests build one over a fake NVML module. Without ``nvml`` every query answers nothing."""

    def __init__(self, gpus: Sequence[Gpu] = (), nvml: Any = None) -> None:
        self.gpus = tuple(gpus)
        self._by_id = {gpu.id: gpu for gpu in self.gpus}
        self._nvml = nvml
        self._lost: set[int] = set()

    @property
    def ids(self) -> tuple[int, ...]:
        """Every GPU found at start (a deviceIds entry must name one of these)."""
        return tuple(self._by_id)

    def usable(self) -> tuple[int, ...]:
        """The GPUs not found gone since start."""
        return tuple(gpu_id for gpu_id in self._by_id if gpu_id not in self._lost)

    def _handle(self, gpu_id: int) -> Any:
        gpu = self._by_id.get(gpu_id)
        if gpu is None or self._nvml is None:
            return None
        return self._nvml.nvmlDeviceGetHandleByUUID(gpu.uuid)

    def usage(self, gpu_id: int) -> GpuUsage | None:
        """What the device does now; None when NVML cannot say."""
        try:
            handle = self._handle(gpu_id)
            if handle is None:
                return None
            rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
            memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
        except Exception as exc:   # NVMLError and its many subclasses
            logger.debug("NVML cannot report GPU %s: %s", gpu_id, exc)
            return None
        return GpuUsage(int(rates.gpu), int(rates.memory), int(memory.used), int(memory.total))

    def process_memory(self, gpu_id: int) -> dict[int, int]:
        """GPU memory in bytes of each process with a context on the device, by pid, where
        NVML reports it (not for every process in every container or MIG setup)."""
        try:
            handle = self._handle(gpu_id)
            if handle is None:
                return {}
            processes = self._nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except Exception as exc:
            logger.debug("NVML cannot list the processes on GPU %s: %s", gpu_id, exc)
            return {}
        return {int(p.pid): int(p.usedGpuMemory) for p in processes
                if isinstance(getattr(p, "usedGpuMemory", None), int)}

    def present(self, gpu_id: int) -> bool:
        """Ask NVML again whether the device is still there (it can fall off the bus, or need
        a reset); a device once found gone stays gone for placement. An error that does not
        say so (a timeout, say) does not take a GPU away."""
        if gpu_id in self._lost or gpu_id not in self._by_id:
            return False
        if self._nvml is None:
            return True     # nothing to ask
        try:
            self._nvml.nvmlDeviceGetMemoryInfo(self._handle(gpu_id))
            return True
        except Exception as exc:
            if getattr(exc, "value", None) not in GONE_ERRORS:
                logger.warning("NVML cannot tell whether GPU %s is there (%s): assuming it is",
                               gpu_id, exc)
                return True
            logger.error("%s is gone: %s", self.describe(gpu_id), exc)
        self._lost.add(gpu_id)
        return False

    def describe(self, gpu_id: int) -> str:
        gpu = self._by_id.get(gpu_id)
        return f"GPU {gpu_id}" if gpu is None else f"GPU {gpu_id} ({gpu.name} {gpu.uuid})"

    def summary(self) -> str:
        return ", ".join(self.describe(gpu.id) for gpu in self.gpus)


def discover_gpus(visible_devices: str | None, number_of_gpu: int | None,
                  nvml: Any = None) -> GpuInventory:
    """The GPUs to use: NVML's devices, as many as ``CUDA_VISIBLE_DEVICES`` shows (None:
    unset), the first ``number_of_gpu`` of them (None: all; more than there are: all, with a
    warning). ``nvml`` is the pynvml module (imported here when None; tests pass a fake)."""
    if number_of_gpu == 0:
        logger.info("GPUs: none used (number_of_gpu=0): every worker runs on the CPU")
        return GpuInventory()
    try:
        nvml = nvml if nvml is not None else importlib.import_module("pynvml")
        nvml.nvmlInit()
        gpus = _visible(nvml, visible_devices)
    except Exception as exc:   # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded ...
        logger.info("GPUs: none (NVML is not available: %s): every worker runs on the CPU",
                    exc or type(exc).__name__)
        return GpuInventory()
    if number_of_gpu is not None and number_of_gpu > len(gpus):
        logger.warning("number_of_gpu=%d, but only %d GPU(s) are visible: using %d",
                       number_of_gpu, len(gpus), len(gpus))
    gpus = gpus if number_of_gpu is None else gpus[:number_of_gpu]
    inventory = GpuInventory(gpus, nvml)
    if gpus:
        logger.info("GPUs: %d used: %s", len(gpus), inventory.summary())
    else:
        logger.info("GPUs: none visible to NVML%s: every worker runs on the CPU",
                    "" if visible_devices is None else
                    f" with CUDA_VISIBLE_DEVICES={visible_devices!r}")
    return inventory


def _visible(nvml: Any, visible_devices: str | None) -> list[Gpu]:
    devices = []
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        devices.append((index, _text(nvml.nvmlDeviceGetUUID(handle)),
                        _text(nvml.nvmlDeviceGetName(handle))))
    if visible_devices is None:
        chosen = devices
    else:
        chosen = _select(devices, visible_devices)
    return [Gpu(ordinal, index, uuid, name) for ordinal, (index, uuid, name) in enumerate(chosen)]


def _select(devices: list[tuple[int, str, str]], visible_devices: str,
            ) -> list[tuple[int, str, str]]:
    """CUDA's reading of CUDA_VISIBLE_DEVICES: indexes or (prefixes of) UUIDs, in the order
    given; the first entry that names no device ends the list (CUDA ignores it and the rest)."""
    chosen: list[tuple[int, str, str]] = []
    for entry in (part.strip() for part in visible_devices.split(",")):
        found = _find(devices, entry)
        if found is None:
            if entry:
                logger.warning("CUDA_VISIBLE_DEVICES entry %r names no device NVML knows "
                               "(MIG instances are not supported): it and those after it "
                               "are not used", entry)
            break
        if found not in chosen:
            chosen.append(found)
    return chosen


def _find(devices: list[tuple[int, str, str]], entry: str) -> tuple[int, str, str] | None:
    if entry.isdigit():
        index = int(entry)
        return next((device for device in devices if device[0] == index), None)
    if not entry.startswith("GPU-"):
        return None
    matches = [device for device in devices if device[1].startswith(entry)]
    return matches[0] if len(matches) == 1 else None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
