"""The placement policy, pure: which GPUs a model permits, which one a new worker gets, and how
describe spells a GPU's use."""
from __future__ import annotations

import pytest

from daemon.gpus.inventory import MIB, GpuUsage
from daemon.gpus.placement import permitted, place, usage_text


@pytest.mark.parametrize(("device_type", "device_ids", "expected"), [
    (None, (), [0, 1, 2]),                 # any usable GPU
    ("gpu", (), [0, 1, 2]),
    ("cpu", (), []),                       # deviceType cpu: never a GPU
    ("cpu", (1,), []),
    (None, (2, 0), [2, 0]),                # deviceIds: only those, in their order
    (None, (2, 5), [2]),                   # one gone since: not usable
])
def test_permitted(device_type, device_ids, expected):
    assert permitted((0, 1, 2), device_type, device_ids) == expected


def test_no_gpu_means_the_cpu():
    assert permitted((), None, ()) == []
    assert place([], {}) is None


def test_the_least_loaded_gpu_wins():
    assert place([0, 1, 2], {}) == 0
    assert place([0, 1, 2], {0: 1}) == 1
    assert place([0, 1, 2], {0: 2, 1: 1, 2: 1}) == 1          # ties: the first permitted
    assert place([2, 0], {0: 1, 2: 1}) == 2                   # ... in deviceIds order
    assert place([0, 1], {0: 3, 1: 4, 7: 0}) == 0             # GPUs not permitted don't count


def test_placing_one_after_another_stays_balanced():
    load: dict[int, int] = {}
    for _ in range(7):
        gpu = place([0, 1, 2], load)
        load[gpu] = load.get(gpu, 0) + 1
    assert load == {0: 3, 1: 2, 2: 2}
    load[0] -= 2                                              # two on GPU 0 stopped
    for _ in range(2):
        gpu = place([0, 1, 2], load)
        load[gpu] = load.get(gpu, 0) + 1
    assert load == {0: 3, 1: 2, 2: 2}                         # both came back to GPU 0


def test_gpu_usage_as_torchserve_writes_it():
    usage = GpuUsage(utilization=5, memory_utilization=1, memory_used=612 * MIB + 5,
                     memory_total=80_000 * MIB)
    assert usage_text(0, usage) == ("gpuId::0 utilization.gpu [%]::5 % "
                                    "utilization.memory [%]::1 % memory.used [MiB]::612 MiB")
    assert usage_text(3, None) == "N/A"
