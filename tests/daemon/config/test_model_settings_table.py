"""daemon/config/model_settings.py: each model setting declared once, and every reader of the
table (model-config.yaml, the `models` JSON, model_snapshot, snapshots both ways, describe)
giving each setting back as it went in."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from daemon.config.declarations import SETTINGS_BY_NAME
from daemon.config.model_settings import (BY_FIELD, MODEL_SETTINGS, ModelSettings,
                                          describe_entry, described,
                                          model_settings_markdown,
                                          request_values, snapshot_entry)
from daemon.config.settings import load_config
from daemon.control.manager import ModelManager
from daemon.models.registry import ModelVersion, Registry
from daemon.models.queue import JobQueue
from daemon.models.requests import RegisterRequest
from daemon.models.snapshots import capture, register_request

# A value other than the default for every setting, as the resolved setting and as written in
# YAML / JSON (deviceIds is a list there).
SAMPLES: dict[str, Any] = {
    "min_workers": 2, "max_workers": 3, "batch_size": 4, "max_batch_delay": 7,
    "response_timeout": 9, "startup_timeout": 11, "job_queue_size": 13,
    "max_requests_per_worker": 17, "max_worker_rss": 19 << 20, "worker_threads": 2,
    "redispatch": False, "device_type": "cpu", "device_ids": (1,),
    "sequence_batching": True, "sequence_max_idle_ms": 23, "sequence_timeout_ms": 29,
    "max_sequence_job_queue_size": 3, "max_num_sequence": 5, "continuous_batching": True,
    "async_communication": True, "max_batches_in_flight": 6, "use_job_ticket": True,
    "client_timeout_ms": 31, "max_retry_timeout": 37, "preload_model": True,
}
GPUS = SimpleNamespace(ids=(0, 1))


def written(field: str) -> Any:
    value = SAMPLES[field]
    return list(value) if isinstance(value, tuple) else value


def manager(tmp_path: Path, **config: str) -> ModelManager:
    return ModelManager(load_config(config, {}, tmp_path), registry=Registry(), supervisor=None,
                        extract_root=tmp_path, snapshots=None, metrics=None,
                        gpus=GPUS)  # type: ignore[arg-type]


def resolve(mm: ModelManager, req: RegisterRequest | None = None,
            yaml: dict[str, Any] | None = None) -> ModelSettings:
    return mm._settings(req or RegisterRequest(url="m.mar"), yaml or {}, "m", "1.0")


def version(settings: ModelSettings, yaml: dict[str, Any]) -> ModelVersion:
    archive = SimpleNamespace(source=Path("/store/m.mar"), downloaded=False,
                              model_dir=Path("/run/m"), manifest={}, model_yaml_config=yaml)
    return ModelVersion(name="m", version="1.0", url="m.mar", handler="handler",
                        runtime="python", archive=archive, settings=settings,
                        queue=JobQueue(10))


# ---- the table -------------------------------------------------------------------------------

def test_the_table_declares_every_field_of_model_settings_once_with_its_default() -> None:
    fields = dataclasses.fields(ModelSettings)
    assert [f.name for f in fields] == [s.field for s in MODEL_SETTINGS]
    assert all(f.default == BY_FIELD[f.name].default for f in fields)
    assert len({s.key for s in MODEL_SETTINGS}) == len(MODEL_SETTINGS)
    assert set(SAMPLES) == set(BY_FIELD) and all(SAMPLES[f] != BY_FIELD[f].default
                                                   for f in SAMPLES)


def test_config_keys_exist_and_their_defaults_are_the_table_s() -> None:
    for setting in MODEL_SETTINGS:
        if setting.config is not None:
            declared = SETTINGS_BY_NAME[setting.config].default
            # default_workers_per_model is unset by default: the table's 0 applies
            assert declared in (setting.default, None), setting.config


def test_what_snapshots_save_is_restored_through_a_register_parameter() -> None:
    request_fields = {f.name for f in dataclasses.fields(RegisterRequest)}
    for setting in MODEL_SETTINGS:
        assert setting.request is None or setting.request in request_fields
        assert not setting.snapshot or setting.request is not None, setting.field
        assert setting.snapshot_key == (setting.key if setting.snapshot else None)


def test_the_readme_shows_the_table() -> None:
    readme = Path(__file__).resolve().parents[3] / "README.md"
    assert model_settings_markdown() in readme.read_text()


def test_settings_are_frozen() -> None:
    settings = ModelSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.batch_size = 2  # type: ignore[misc]


def test_an_empty_config_resolves_to_the_table_s_defaults(tmp_path: Path) -> None:
    assert resolve(manager(tmp_path)) == ModelSettings()


# ---- every setting through every reader ------------------------------------------------------

@pytest.mark.parametrize("setting", MODEL_SETTINGS, ids=lambda s: s.key)
def test_model_config_yaml_sets_each_setting(tmp_path: Path, setting: Any) -> None:
    yaml = {setting.key: written(setting.field)}
    assert getattr(resolve(manager(tmp_path), yaml=yaml), setting.field) == SAMPLES[
        setting.field]


@pytest.mark.parametrize("setting", MODEL_SETTINGS, ids=lambda s: s.key)
def test_the_models_json_sets_each_setting(tmp_path: Path, setting: Any) -> None:
    models = json.dumps({"m": {"1.0": {setting.key: written(setting.field)}}})
    assert getattr(resolve(manager(tmp_path, models=models)), setting.field) == SAMPLES[
        setting.field]


@pytest.mark.parametrize("setting", [s for s in MODEL_SETTINGS if s.config],
                         ids=lambda s: s.config)
def test_a_global_config_key_sets_each_model_s_default(tmp_path: Path, setting: Any) -> None:
    value = written(setting.field)
    mm = manager(tmp_path, **{setting.config: str(value).lower()})
    assert getattr(resolve(mm), setting.field) == SAMPLES[setting.field]


@pytest.mark.parametrize("setting", [s for s in MODEL_SETTINGS if s.request],
                         ids=lambda s: s.key)
def test_explicit_values_beat_yaml_beat_the_models_json(tmp_path: Path, setting: Any) -> None:
    """SPEC 1.2 FIX: API parameters (and restored snapshots) win over the YAML."""
    explicit, in_yaml, in_json = 30, 20, 10
    mm = manager(tmp_path, models=json.dumps({"m": {"1.0": {setting.key: in_json}}}))
    req = RegisterRequest(url="m.mar", **{setting.request: explicit})
    yaml = {setting.key: in_yaml}
    assert getattr(resolve(mm, req, yaml), setting.field) == explicit
    assert getattr(resolve(mm, yaml=yaml), setting.field) == in_yaml
    assert getattr(resolve(mm), setting.field) == in_json


def test_every_setting_survives_a_snapshot_save_and_restore(tmp_path: Path) -> None:
    """Snapshot settings come back as explicit values; the others from the archive's YAML."""
    mm = manager(tmp_path)
    yaml = {setting.key: written(setting.field) for setting in MODEL_SETTINGS}
    registered = resolve(mm, yaml=yaml)
    assert registered == ModelSettings(**SAMPLES)
    registry = Registry()
    registry.add(version(registered, yaml))
    entry = json.loads(json.dumps(capture(registry)))["models"]["m"]["versions"]["1.0"]
    assert {k: entry[k] for k in snapshot_entry(registered)} == {
        s.key: SAMPLES[s.field] for s in MODEL_SETTINGS if s.snapshot}
    # Restored against an archive whose YAML changed the saved settings meanwhile: the
    # snapshot's values win; the settings it does not save come from the YAML again.
    changed = {**yaml, **{s.key: 99 for s in MODEL_SETTINGS if s.snapshot}}
    assert resolve(mm, register_request("m", entry), changed) == registered


def test_a_torchserve_model_snapshot_entry_sets_its_settings(tmp_path: Path) -> None:
    entry = {"marName": "m.mar", "defaultVersion": True,
             **{s.key: written(s.field) for s in MODEL_SETTINGS if s.snapshot}}
    config = load_config({"model_snapshot": json.dumps({"models": {"m": {"1.0": entry}}})}, {},
                         tmp_path)
    parsed = config.model_snapshot["models"]["m"]["1.0"]
    req = RegisterRequest(url="m.mar", **request_values(parsed))
    settings = resolve(manager(tmp_path), req)
    assert all(getattr(settings, s.field) == SAMPLES[s.field]
               for s in MODEL_SETTINGS if s.snapshot)


def test_describe_shows_the_table_s_describe_settings_under_their_keys(tmp_path: Path) -> None:
    settings = ModelSettings(**SAMPLES)
    shown = {s.key: described(s, SAMPLES[s.field]) for s in MODEL_SETTINGS if s.describe}
    assert describe_entry(settings) == shown
    mm = manager(tmp_path)
    mm.supervisor = SimpleNamespace(describe_workers=lambda mv: [],  # type: ignore[assignment]
                                    describe_template=lambda mv: {})
    doc = mm.describe_version(version(settings, {}))
    assert {key: doc[key] for key in shown} == shown
    assert not {s.key for s in MODEL_SETTINGS if not s.describe} & set(doc)
