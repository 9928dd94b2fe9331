"""TorchServe's `model_snapshot` config key through the real daemon (KServe's config.properties
uses it with load_models=all): its models, versions, settings and default versions serve at
start, in place of torchd's newest snapshot and of load_models (a model torchd refuses for its
model-config.yaml is logged and left out); model-config.yaml keys torchd does not implement are
named in describe and in one warning at register."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.support.archives import build_archive
from tests.support.daemon import Daemon

pytestmark = pytest.mark.timeout(240)
IGNORED = ["useVenv", "parallelLevel"]


def entry(mar: str, default: bool, **settings: int) -> dict:
    return {"defaultVersion": default, "marName": mar, "minWorkers": 1, "maxWorkers": 1,
            "batchSize": 1, "maxBatchDelay": 100, "responseTimeout": 120, **settings}


SNAPSHOT = {"name": "startup.cfg", "modelCount": 4, "models": {
    "snap": {"1.0": entry("snap.mar", False),
             "2.0": entry("snap_v2.mar", True, maxWorkers=2, batchSize=4, maxBatchDelay=50,
                          responseTimeout=60)},
    "cfgkeys": {"1.0": entry("cfgkeys.mar", True, minWorkers=0)},
    "refused": {"1.0": entry("refused.mar", True)},
}}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """snap.mar (1.0), snap_v2.mar (2.0), other.mar, cfgkeys.mar (with unimplemented keys),
    refused.mar (with keys torchd refuses)."""
    out = tmp_path_factory.mktemp("snapshot-archives")
    build_archive("probe", out, name="snap")
    build_archive("probe", out, name="other")
    build_archive("probe", out, name="cfgkeys", config_file="unimplemented.yaml")
    build_archive("probe", out, name="refused", config_file="refused.yaml")
    second = build_archive("probe", tmp_path_factory.mktemp("snap-v2"), name="snap",
                           version="2.0")
    shutil.copy(second, out / "snap_v2.mar")
    return out


@pytest.fixture
def daemon(store: Path, tmp_path: Path):
    model_store = tmp_path / "store"
    shutil.copytree(store, model_store)
    d = Daemon(tmp_path / "work", model_store)
    yield d
    d.cleanup()


def names(daemon: Daemon) -> list[str]:
    return [m["modelName"] for m in daemon.mgmt("GET", "/models").json()["models"]]


def test_model_snapshot_with_load_models_all_serves_its_models(daemon: Daemon) -> None:
    # First a plain start whose newest snapshot holds "other": model_snapshot must replace it.
    daemon.start(ncs=False)
    assert daemon.register("other.mar", initial_workers=1).status_code == 200
    assert daemon.stop() == 0
    daemon.settings.update(load_models="all", model_snapshot=json.dumps(SNAPSHOT))
    daemon.start(ncs=False, timeout=120)

    assert names(daemon) == ["cfgkeys", "snap"]   # neither "other" (snapshot) nor load_models
    assert ('model_snapshot: model refused version 1.0 from refused.mar refused: Model '
            '"refused" version 1.0 cannot be served as configured: parallelType tp with '
            'parallelLevel 2') in daemon.log()       # the others serve; not ready without it
    assert daemon.infer("GET", "/v2/health/ready").status_code == 503
    [default] = daemon.describe("snap")
    assert {k: default[k] for k in ("modelVersion", "minWorkers", "maxWorkers", "batchSize",
                                    "maxBatchDelay", "responseTimeout", "loadedAtStartup")} == {
        "modelVersion": "2.0", "minWorkers": 1, "maxWorkers": 2, "batchSize": 4,
        "maxBatchDelay": 50, "responseTimeout": 60, "loadedAtStartup": True}
    assert [w["status"] for w in default["workers"]] == ["READY"]   # waited for at start
    [first] = daemon.describe("snap", "1.0")
    assert (first["batchSize"], first["maxBatchDelay"], len(first["workers"])) == (1, 100, 1)
    assert [m["modelVersion"] for m in daemon.describe("snap", "all")] == ["1.0", "2.0"]
    served = daemon.infer("POST", "/predictions/snap", json={})
    assert served.status_code == 200 and served.json()["version"] == "2.0"
    assert daemon.infer("POST", "/predictions/snap/1.0", json={}).json()["version"] == "1.0"
    assert "load_models (all) is ignored" in daemon.log()

    [cfg] = daemon.describe("cfgkeys")
    assert (cfg["ignoredConfigKeys"], cfg["batchSize"], cfg["workers"]) == (IGNORED, 1, [])
    assert default["ignoredConfigKeys"] == []


def test_unimplemented_yaml_keys_named_once_at_register(daemon: Daemon) -> None:
    daemon.start()
    response = daemon.register("cfgkeys.mar", model_name="keyed", initial_workers=1)
    assert response.status_code == 200, response.text
    [doc] = daemon.describe("keyed")
    assert (doc["ignoredConfigKeys"], doc["batchSize"]) == (IGNORED, 2)   # YAML batchSize: 2
    warnings = [line for line in daemon.log().splitlines() if "model keyed 1.0: torchd does "
                "not implement" in line]
    assert len(warnings) == 1 and warnings[0].endswith("ignored: useVenv, parallelLevel"), \
        warnings
    assert daemon.infer("POST", "/predictions/keyed", json={}).status_code == 200


def test_model_snapshot_naming_a_missing_archive_stops_the_start(daemon: Daemon) -> None:
    broken = {"name": "startup.cfg", "modelCount": 1,
              "models": {"ghost": {"1.0": entry("ghost.mar", True)}}}
    daemon.settings.update(model_snapshot=json.dumps(broken))
    with pytest.raises(RuntimeError):
        daemon.start(timeout=60)
    assert daemon.proc.returncode != 0
    assert "model_snapshot: cannot load model ghost version 1.0 from ghost.mar" in daemon.log()
