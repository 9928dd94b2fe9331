"""daemon.config: TorchServe's model_snapshot key, parsed and checked at start."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.config.settings import ConfigError, load_config

pytestmark = pytest.mark.timeout(30)
ENTRY = {"defaultVersion": True, "marName": "m.mar", "minWorkers": 1, "maxWorkers": 2,
         "batchSize": 4, "maxBatchDelay": 50, "responseTimeout": 60, "runtimeType": "python"}


def load(tmp_path: Path, value: str):
    (tmp_path / "config.properties").write_text(f"model_snapshot={value}\n")
    return load_config({}, {}, tmp_path)


def test_torchserve_snapshot_is_parsed(tmp_path: Path) -> None:
    value = json.dumps({"name": "startup.cfg", "modelCount": 1, "models": {"m": {"1.0": ENTRY}}})
    config = load(tmp_path, value)
    assert config.model_snapshot == {"name": "startup.cfg", "modelCount": 1,
                                     "models": {"m": {"1.0": ENTRY}}}


def test_unset_is_none(tmp_path: Path) -> None:
    assert load_config({}, {}, tmp_path).model_snapshot is None


@pytest.mark.parametrize(("value", "reason"), [
    ("{not json", "invalid JSON"),
    ('{"models": []}', '"models"'),
    ('{"modelCount": "1", "models": {}}', "modelCount"),
    ('{"models": {"m": {"1.0": {"minWorkers": 1}}}}', "marName is required"),
    ('{"models": {"m": {"1.0": {"marName": "m.mar", "batchSize": 0}}}}', "batchSize"),
    ('{"models": {"m": {}}}', "expected an object of versions"),
])
def test_bad_snapshots_stop_the_start_naming_the_key(tmp_path: Path, value: str,
                                                     reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, value)
    assert "model_snapshot" in str(caught.value) and reason in str(caught.value)
