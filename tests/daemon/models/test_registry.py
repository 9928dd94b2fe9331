"""daemon.models.registry: versions, the default version and TorchServe's error for every lookup."""
from __future__ import annotations

from pathlib import Path

import pytest

from daemon.models.archives import PreparedArchive
from daemon.errors import (
    Conflict,
    Forbidden,
    ModelNotFound,
    ModelVersionNotFound,
    TorchdError,
)
from daemon.models.registry import ModelSettings, ModelVersion, Registry
from daemon.models.queue import JobQueue


def version(name: str, v: str = "1.0", downloaded: bool = False) -> ModelVersion:
    archive = PreparedArchive(source=Path(f"/store/{name}.mar"), downloaded=downloaded,
                              model_dir=Path(f"/run/{name}-{v}"),
                              manifest={"model": {"modelName": name, "modelVersion": v}},
                              model_yaml_config={"batchSize": 2})
    return ModelVersion(name=name, version=v, url=f"{name}.mar", handler="handler",
                        runtime="python", archive=archive,
                        settings=ModelSettings(min_workers=1, max_workers=2),
                        queue=JobQueue(10))


def error(exc: pytest.ExceptionInfo) -> tuple[int, str, str]:
    err: TorchdError = exc.value
    return err.status, err.type, err.message


@pytest.fixture
def registry() -> Registry:
    return Registry()


def test_first_version_is_default_and_later_ones_are_not(registry: Registry) -> None:
    v1, v2 = version("m", "1.0"), version("m", "2.0")
    registry.add(v1)
    registry.add(v2)
    assert registry.get("m") is v1 and registry.get("m", None) is v1
    assert registry.get("m", "2.0") is v2
    assert registry.defaults() == [v1]
    assert registry.versions("m") == [v1, v2]
    assert registry.model("m").default_version == "1.0"


def test_duplicate_version_is_a_409_and_keeps_the_first(registry: Registry) -> None:
    first = version("m")
    registry.add(first)
    with pytest.raises(Conflict) as exc:
        registry.add(version("m"))
    assert error(exc) == (409, "ConflictStatusException",
                          "Model version 1.0 is already registered for model m")
    assert registry.get("m") is first


def test_lookup_errors_have_torchserve_wordings(registry: Registry) -> None:
    registry.add(version("m"))
    for call in (lambda: registry.get("x"), lambda: registry.get("x", "1.0"),
                 lambda: registry.model("x"), lambda: registry.versions("x"),
                 lambda: registry.set_default("x", "1.0"),
                 lambda: registry.check_removable("x", None)):
        with pytest.raises(ModelNotFound) as exc:
            call()
        assert error(exc) == (404, "ModelNotFoundException", "Model not found: x")
    with pytest.raises(ModelVersionNotFound) as exc:
        registry.get("m", "9.9")
    assert error(exc) == (404, "ModelVersionNotFoundException",
                          "Model version: 9.9 does not exist for model: m")
    with pytest.raises(ModelVersionNotFound) as exc:
        registry.check_removable("m", "9.9")
    assert error(exc)[2] == "Model version: 9.9 does not exist for model: m"
    # set-default words it without colons, as TorchServe does.
    with pytest.raises(ModelVersionNotFound) as exc:
        registry.set_default("m", "9.9")
    assert error(exc) == (404, "ModelVersionNotFoundException",
                          "Model version 9.9 does not exist for model m")


def test_set_default_moves_the_default(registry: Registry) -> None:
    v1, v2 = version("m", "1.0"), version("m", "2.0")
    registry.add(v1)
    registry.add(v2)
    registry.set_default("m", "2.0")
    assert registry.get("m") is v2 and registry.defaults() == [v2]
    registry.set_default("m", "2.0")          # idempotent
    assert registry.get("m") is v2


def test_default_cannot_be_removed_while_others_exist(registry: Registry) -> None:
    v1, v2 = version("m", "1.0"), version("m", "2.0")
    registry.add(v1)
    registry.add(v2)
    for asked in (None, "1.0"):
        with pytest.raises(Forbidden) as exc:
            registry.check_removable("m", asked)
        assert error(exc) == (403, "InvalidModelVersionException",
                              "Cannot remove default version for model m")
    assert registry.check_removable("m", "2.0") is v2
    registry.remove(v2)
    assert registry.check_removable("m", None) is v1      # the last version may go
    registry.remove(v1)
    with pytest.raises(ModelNotFound):
        registry.model("m")
    assert registry.defaults() == [] and registry.all_versions() == []


def test_remove_is_by_identity(registry: Registry) -> None:
    kept = version("m")
    registry.add(kept)
    registry.remove(version("m"))      # same name and version, another object: not ours
    registry.remove(version("other"))  # unknown model: nothing happens
    assert registry.get("m") is kept
    registry.remove(kept)
    registry.remove(kept)              # twice is harmless
    assert registry.all_versions() == []


def test_defaults_sorted_by_name_and_all_versions(registry: Registry) -> None:
    for name, v in (("b", "1.0"), ("a", "1.0"), ("c", "1.0"), ("a", "2.0")):
        registry.add(version(name, v))
    registry.set_default("a", "2.0")
    assert [(mv.name, mv.version) for mv in registry.defaults()] == [
        ("a", "2.0"), ("b", "1.0"), ("c", "1.0")]
    assert [(mv.name, mv.version) for mv in registry.all_versions()] == [
        ("a", "1.0"), ("a", "2.0"), ("b", "1.0"), ("c", "1.0")]


def test_removing_the_default_hands_it_to_the_oldest_remaining(registry: Registry) -> None:
    """The manager's rollback of a first version whose workers failed to start, while other
    versions were registered meanwhile: the default must never name a missing version."""
    v1, v2, v3 = version("m", "1.0"), version("m", "2.0"), version("m", "3.0")
    for mv in (v1, v2, v3):
        registry.add(mv)
    registry.remove(v1)
    assert registry.get("m") is v2 and registry.defaults() == [v2]
    registry.remove(v2)
    assert registry.get("m") is v3
    registry.remove(v3)
    registry.add(version("m", "4.0"))   # a fresh model: its first version is the default
    assert registry.get("m").version == "4.0"


def test_model_version_exposes_its_archive() -> None:
    mv = version("m", "3.0")
    assert mv.key == ("m", "3.0")
    assert mv.model_dir == "/run/m-3.0"
    assert mv.manifest["model"]["modelVersion"] == "3.0"
    assert mv.yaml_config == {"batchSize": 2}


def test_holds_is_by_identity(registry: Registry) -> None:
    mv = version("m")
    assert not registry.holds(mv)
    registry.add(mv)
    assert registry.holds(mv) and not registry.holds(version("m"))
    registry.remove(mv)
    assert not registry.holds(mv)
