"""The GPU inventory (daemon/gpus/inventory.py) over a fake NVML: CUDA_VISIBLE_DEVICES,
number_of_gpu, no NVML, the queries describe and metrics make, a GPU that vanishes."""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from daemon.config.settings import ConfigError, load_config
from daemon.gpus.inventory import MIB, discover_gpus
from tests.support.gpus import FakeNvml, fake_inventory


def layout(inventory) -> list[tuple[int, int]]:
    """(CUDA ordinal, NVML index) of each GPU."""
    return [(gpu.id, gpu.index) for gpu in inventory.gpus]


def test_every_nvml_device_when_cuda_visible_devices_is_unset(caplog):
    caplog.set_level(logging.INFO, "daemon.gpus.inventory")
    inventory, nvml = fake_inventory(3)
    assert layout(inventory) == [(0, 0), (1, 1), (2, 2)]
    assert inventory.ids == inventory.usable() == (0, 1, 2)
    assert inventory.gpus[1].uuid == nvml.devices[1].uuid
    assert inventory.gpus[1].name == "NVIDIA H200"          # bytes from older pynvml, decoded
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("GPUs: 3 used: GPU 0 (NVIDIA H200 GPU-00000000")


@pytest.mark.parametrize(("visible", "expected"), [
    ("1", [(0, 1)]),                       # CUDA numbers the visible devices from 0
    ("2,0", [(0, 2), (1, 0)]),             # in the order given
    (" 1 , 2 ", [(0, 1), (1, 2)]),
    ("0,0,1", [(0, 0), (1, 1)]),
    ("GPU-00000002-aaaa-bbbb-cccc-000000000002", [(0, 2)]),   # a UUID
    ("GPU-00000001,0", [(0, 1), (1, 0)]),                      # a UUID's unique prefix
    ("GPU-0000000", []),                   # a prefix of every UUID names none of them
    ("1,7,2", [(0, 1)]),                   # CUDA stops at the first entry naming no device
    ("-1", []),
    ("", []),                              # set and empty: no GPU
    ("MIG-1234", []),
])
def test_cuda_visible_devices(visible, expected):
    inventory, _ = fake_inventory(3, visible=visible)
    assert layout(inventory) == expected


def test_an_entry_naming_no_device_is_warned_about(caplog):
    fake_inventory(2, visible="0,5")
    assert any("entry '5' names no device" in r.getMessage() for r in caplog.records)


def test_number_of_gpu_takes_the_first_ones_and_is_capped(caplog):
    inventory, _ = fake_inventory(3, number_of_gpu=2)
    assert inventory.ids == (0, 1)
    inventory, _ = fake_inventory(2, number_of_gpu=5)
    assert inventory.ids == (0, 1)
    assert any(r.levelno == logging.WARNING and "number_of_gpu=5, but only 2" in r.getMessage()
               for r in caplog.records)


def test_number_of_gpu_zero_never_asks_nvml(caplog):
    caplog.set_level(logging.INFO, "daemon.gpus.inventory")
    nvml = FakeNvml(2)
    inventory = discover_gpus(None, 0, nvml=nvml)
    assert inventory.ids == () and not nvml.initialized
    assert [r.getMessage() for r in caplog.records] == [
        "GPUs: none used (number_of_gpu=0): every worker runs on the CPU"]


def test_no_nvml_means_no_gpu_and_one_log_line(caplog, monkeypatch):
    caplog.set_level(logging.INFO, "daemon.gpus.inventory")
    inventory = discover_gpus(None, None, nvml=FakeNvml(2, fail_init="Driver Not Loaded"))
    assert inventory.ids == () and inventory.usage(0) is None
    monkeypatch.setitem(sys.modules, "pynvml", None)          # nvidia-ml-py not installed
    assert discover_gpus(None, None).ids == ()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == ("GPUs: none (NVML is not available: Driver Not Loaded): every worker "
                        "runs on the CPU")
    assert len(lines) == 2 and "NVML is not available" in lines[1] and "pynvml" in lines[1]


def test_no_device_says_so(caplog):
    caplog.set_level(logging.INFO, "daemon.gpus.inventory")
    assert discover_gpus("", None, nvml=FakeNvml(2)).ids == ()
    assert [r.getMessage() for r in caplog.records] == [
        "GPUs: none visible to NVML with CUDA_VISIBLE_DEVICES='': every worker runs on the CPU"]


def test_usage_and_per_process_memory_follow_the_visible_numbering():
    inventory, nvml = fake_inventory(3, visible="2")
    device = nvml.devices[2]
    device.utilization, device.memory_utilization = 37, 4
    device.processes = {4242: 700 * MIB, 4343: None}          # None: NVML cannot say
    usage = inventory.usage(0)
    assert (usage.utilization, usage.memory_utilization) == (37, 4)
    assert (usage.memory_used, usage.memory_total) == (612 * MIB, 143771 * MIB)
    assert usage.memory_used_percent == pytest.approx(100 * 612 / 143771)
    assert inventory.process_memory(0) == {4242: 700 * MIB}
    assert inventory.usage(1) is None and inventory.process_memory(1) == {}


def test_a_vanished_gpu_is_asked_for_again_and_stays_gone(caplog):
    inventory, nvml = fake_inventory(2)
    assert inventory.present(1)
    nvml.lose(1)
    assert inventory.usage(1) is None and inventory.process_memory(1) == {}
    assert not inventory.present(1)
    assert inventory.usable() == (0,) and inventory.ids == (0, 1)
    nvml.devices[1].lost = False                 # back after a reset: placement still avoids it
    assert not inventory.present(1) and inventory.usable() == (0,)
    assert any(r.getMessage() == f"GPU 1 (NVIDIA H200 {nvml.devices[1].uuid}) is gone: GPU is lost"
               for r in caplog.records)
    assert not inventory.present(9)


def test_a_gpu_whose_uuid_nvml_no_longer_lists_is_gone():
    inventory, nvml = fake_inventory(2)
    del nvml.devices[0]
    assert not inventory.present(0) and inventory.usable() == (1,)


def test_an_nvml_error_that_does_not_say_gone_keeps_the_gpu(caplog):
    inventory, nvml = fake_inventory(2)
    nvml.devices[1].flaky = True
    assert inventory.usage(1) is None
    assert inventory.present(1) and inventory.usable() == (0, 1)
    assert any("cannot tell whether GPU 1 is there (Timeout)" in r.getMessage()
               for r in caplog.records)


def test_the_daemon_never_imports_torch():
    """CUDA can only be initialized through torch: the daemon (which starts the zygote) has no
    torch at all, with its GPU inventory built."""
    code = ("import sys, daemon.ops.server as s, daemon.gpus.inventory as g\n"
            "g.discover_gpus(None, None)\n"
            "assert 'torch' not in sys.modules, 'the daemon imported torch'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_number_of_gpu_and_cuda_visible_devices_are_read_into_the_config(tmp_path, caplog):
    config = load_config({}, {}, tmp_path)
    assert (config.number_of_gpu, config.cuda_visible_devices) == (None, None)
    (tmp_path / "config.properties").write_text("number_of_gpu=2\n")
    config = load_config({}, {"CUDA_VISIBLE_DEVICES": "GPU-1,0"}, tmp_path)
    assert (config.number_of_gpu, config.cuda_visible_devices) == (2, "GPU-1,0")
    assert not any("number_of_gpu" in r.getMessage() for r in caplog.records)   # not ignored
    assert load_config({}, {"TS_NUMBER_OF_GPU": "0"}, tmp_path).number_of_gpu == 0
    assert load_config({"number_of_gpu": "1"}, {}, tmp_path).number_of_gpu == 1
    with pytest.raises(ConfigError, match="invalid value for number_of_gpu"):
        load_config({"number_of_gpu": "-1"}, {}, tmp_path)
