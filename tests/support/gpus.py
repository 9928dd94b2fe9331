"""A fake ``pynvml`` module: the few NVML calls torchd makes, over devices a test describes.

Handed to ``daemon.gpus.inventory.discover_gpus(..., nvml=FakeNvml(...))`` it stands in for the
real library, so the inventory, placement, describe and metrics run their real code on a machine
without a GPU. A device can be made to vanish (``lose``), as one that fell off the bus.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from daemon.gpus.inventory import MIB, GpuInventory, discover_gpus


class NVMLError(Exception):
    """pynvml's: ``value`` is NVML's return code."""

    def __init__(self, value: int, text: str) -> None:
        super().__init__(text)
        self.value = value


GPU_IS_LOST, NOT_FOUND, TIMEOUT, DRIVER_NOT_LOADED = 15, 6, 10, 9


@dataclass
class FakeDevice:
    uuid: str
    name: str = "NVIDIA H200"
    utilization: int = 5
    memory_utilization: int = 1
    memory_used: int = 612 * MIB
    memory_total: int = 143771 * MIB
    processes: dict[int, int | None] = field(default_factory=dict)   # pid -> bytes (None: N/A)
    lost: bool = False
    flaky: bool = False                   # every query times out


class FakeNvml:
    NVMLError = NVMLError

    def __init__(self, count: int = 2, fail_init: str | None = None) -> None:
        self.devices = [FakeDevice(uuid=f"GPU-{i:08x}-aaaa-bbbb-cccc-{i:012x}")
                        for i in range(count)]
        self.fail_init = fail_init
        self.initialized = False

    def lose(self, index: int) -> None:
        self.devices[index].lost = True

    def _device(self, handle: FakeDevice) -> FakeDevice:
        if handle.lost:
            raise NVMLError(GPU_IS_LOST, "GPU is lost")
        if handle.flaky:
            raise NVMLError(TIMEOUT, "Timeout")
        return handle

    # -- the pynvml calls ------------------------------------------------------------------
    def nvmlInit(self) -> None:
        if self.fail_init:
            raise NVMLError(DRIVER_NOT_LOADED, self.fail_init)
        self.initialized = True

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeDevice:
        return self._device(self.devices[index])

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeDevice:
        for device in self.devices:
            if device.uuid == uuid:
                return self._device(device)
        raise NVMLError(NOT_FOUND, "Not Found")

    def nvmlDeviceGetUUID(self, handle: FakeDevice) -> str:
        return self._device(handle).uuid

    def nvmlDeviceGetName(self, handle: FakeDevice) -> bytes:
        return self._device(handle).name.encode()    # older pynvml releases return bytes

    def nvmlDeviceGetUtilizationRates(self, handle: FakeDevice) -> SimpleNamespace:
        device = self._device(handle)
        return SimpleNamespace(gpu=device.utilization, memory=device.memory_utilization)

    def nvmlDeviceGetMemoryInfo(self, handle: FakeDevice) -> SimpleNamespace:
        device = self._device(handle)
        return SimpleNamespace(used=device.memory_used, total=device.memory_total,
                               free=device.memory_total - device.memory_used)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeDevice) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=pid, usedGpuMemory=used)
                for pid, used in self._device(handle).processes.items()]


def fake_inventory(count: int = 2, visible: str | None = None,
                   number_of_gpu: int | None = None) -> tuple[GpuInventory, FakeNvml]:
    nvml = FakeNvml(count)
    return discover_gpus(visible, number_of_gpu, nvml=nvml), nvml
