"""A model's deviceType and deviceIds (model-config.yaml, or the `models` JSON): read at register,
checked against the GPUs in use; a deviceIds entry that names no GPU is a 400 naming it."""
from __future__ import annotations

import asyncio
import json
import zipfile
from pathlib import Path

import pytest

from daemon.config.settings import ConfigError, load_config
from daemon.errors import BadRequest
from daemon.gpus.inventory import GpuInventory
from daemon.metrics import Metrics
from daemon.control.manager import ModelManager
from daemon.models.registry import Registry
from daemon.models.requests import RegisterRequest
from daemon.models.snapshots import SnapshotStore
from tests.daemon.control.test_manager import StandInSupervisor
from tests.support.gpus import fake_inventory


def write_mar(path: Path, yaml_text: str) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {
            "modelName": path.stem, "handler": "handler.py", "configFile": "model-config.yaml"}}))
        archive.writestr("model-config.yaml", yaml_text)
    return path


def manager(tmp_path: Path, gpus: GpuInventory, **settings: str) -> ModelManager:
    store = tmp_path / "store"
    store.mkdir(exist_ok=True)
    config = load_config({"model_store": str(store), **settings}, {}, tmp_path)
    metrics = Metrics(hostname="host")
    return ModelManager(config, Registry(), StandInSupervisor(metrics), tmp_path / "extracted",
                        snapshots=SnapshotStore(tmp_path / "config"), metrics=metrics, gpus=gpus)


def register(mm: ModelManager, name: str, yaml_text: str):
    write_mar(mm.config.model_store / f"{name}.mar", yaml_text)
    asyncio.run(mm.register(RegisterRequest(url=f"{name}.mar", synchronous=False)))
    return mm.registry.get(name).settings


def test_device_settings_reach_the_model_settings(tmp_path):
    mm = manager(tmp_path, fake_inventory(2)[0])
    s = register(mm, "pinned", "deviceType: gpu\ndeviceIds: [1]\n")
    assert (s.device_type, s.device_ids) == ("gpu", (1,))
    s = register(mm, "cpu", "deviceType: CPU\nminWorkers: 1\n")
    assert (s.device_type, s.device_ids) == ("cpu", ())
    s = register(mm, "plain", "minWorkers: 1\n")
    assert (s.device_type, s.device_ids) == (None, ())


@pytest.mark.parametrize(("yaml_text", "message"), [
    ("deviceIds: [0, 7]\n", "deviceIds entry 7 of model bad names no GPU in use (GPUs: 0, 1)"),
    ("deviceIds: [0, x]\n",
     "Invalid deviceIds in model-config.yaml: deviceIds entry 'x' is not a GPU id "
     "(an integer >= 0)"),
    ("deviceType: tpu\n",
     "Invalid deviceType in model-config.yaml: deviceType must be cpu or gpu, not 'tpu'"),
])
def test_a_bad_device_setting_is_a_400_naming_it(tmp_path, yaml_text, message):
    mm = manager(tmp_path, fake_inventory(2)[0])
    with pytest.raises(BadRequest) as caught:
        register(mm, "bad", yaml_text)
    assert (caught.value.status, caught.value.message) == (400, message)
    assert mm.registry.all_versions() == [] and mm.supervisor.scaled == []
    assert not list((tmp_path / "extracted").glob("*"))     # nothing left extracted


def test_number_of_gpu_limits_the_ids_a_model_may_name(tmp_path):
    mm = manager(tmp_path, fake_inventory(4, number_of_gpu=2)[0])
    with pytest.raises(BadRequest, match="deviceIds entry 3 of model m names no GPU in use "
                                         r"\(GPUs: 0, 1\)"):
        register(mm, "m", "deviceIds: [3]\n")


def test_without_gpus_device_ids_are_ignored_and_the_model_serves_on_the_cpu(tmp_path, caplog):
    mm = manager(tmp_path, GpuInventory())
    s = register(mm, "m", "deviceIds: [0, 1]\n")
    assert s.device_ids == (0, 1)                 # placement finds none of them usable
    assert any("deviceIds [0, 1] ignored: no GPU is in use" in r.getMessage()
               for r in caplog.records)


def test_models_json_sets_devices_below_the_yaml(tmp_path):
    models = json.dumps({"m": {"1.0": {"deviceIds": [1], "deviceType": "gpu"}},
                         "n": {"1.0": {"deviceIds": [9]}}})
    mm = manager(tmp_path, fake_inventory(2)[0], models=models)
    s = register(mm, "m", "deviceType: cpu\n")
    assert (s.device_type, s.device_ids) == ("cpu", (1,))
    with pytest.raises(BadRequest, match="deviceIds entry 9 of model n names no GPU"):
        register(mm, "n", "minWorkers: 0\n")
    with pytest.raises(ConfigError, match="deviceType must be cpu or gpu"):
        load_config({"models": json.dumps({"m": {"1.0": {"deviceType": "fpga"}}})}, {},
                    tmp_path)
