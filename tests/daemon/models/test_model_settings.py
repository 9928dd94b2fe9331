"""Which layer wins for a model version's settings: request > model-config.yaml > `models` JSON
> config.properties defaults (SPEC 1.2 FIX: explicit API parameters beat the YAML)."""
from __future__ import annotations

import json
from pathlib import Path

from daemon.config.settings import load_config
from daemon.control.manager import ModelManager
from daemon.models.requests import RegisterRequest


def manager(tmp_path: Path, **settings: str) -> ModelManager:
    config = load_config(settings, {}, tmp_path)
    return ModelManager(config, registry=None, supervisor=None, extract_root=tmp_path,
                        snapshots=None, metrics=None)


def test_request_beats_yaml_beats_defaults(tmp_path):
    mm = manager(tmp_path)
    yaml = {"batchSize": 4, "responseTimeout": 7, "maxBatchDelay": 50}
    s = mm._settings(RegisterRequest(url="m.mar", batch_size=2), yaml, "m", "1.0")
    assert (s.batch_size, s.response_timeout, s.max_batch_delay) == (2, 7, 50)
    s = mm._settings(RegisterRequest(url="m.mar"), {}, "m", "1.0")
    assert (s.batch_size, s.response_timeout, s.max_batch_delay) == (1, 120, 100)


def test_recycling_per_model_over_global(tmp_path):
    mm = manager(tmp_path, max_requests_per_worker="100", max_worker_rss="1G")
    s = mm._settings(RegisterRequest(url="m.mar"), {}, "m", "1.0")
    assert (s.max_requests_per_worker, s.max_worker_rss) == (100, 1 << 30)
    yaml = {"maxRequestsPerWorker": 3, "maxWorkerRss": 5 * (1 << 30)}   # beyond a Java int
    s = mm._settings(RegisterRequest(url="m.mar"), yaml, "m", "1.0")
    assert (s.max_requests_per_worker, s.max_worker_rss) == (3, 5 * (1 << 30))


def test_models_json_applies_when_yaml_is_silent(tmp_path):
    models = json.dumps({"m": {"1.0": {"maxRequestsPerWorker": 9, "maxWorkerRss": "2M",
                                       "batchSize": 3}}})
    mm = manager(tmp_path, models=models)
    s = mm._settings(RegisterRequest(url="m.mar"), {"batchSize": 5}, "m", "1.0")
    assert (s.batch_size, s.max_requests_per_worker, s.max_worker_rss) == (5, 9, 2 << 20)


def test_a_startup_models_default_workers_yield_to_the_yaml_and_the_json(tmp_path):
    """As TorchServe: a startup model's workers are the archive's model-config.yaml
    minWorkers/maxWorkers, else the `models` JSON's, else the startup default (one per CPU);
    an explicit initial_workers (a register call) still beats the YAML."""
    models = json.dumps({"j": {"1.0": {"minWorkers": 3}}})
    mm = manager(tmp_path, models=models, default_workers_per_model="5")
    startup = RegisterRequest(url="m.mar", default_workers=4)
    pinned = {"minWorkers": 1, "maxWorkers": 2}
    s = mm._settings(startup, pinned, "m", "1.0")
    assert (s.min_workers, s.max_workers) == (1, 2)
    s = mm._settings(startup, pinned, "j", "1.0")
    assert (s.min_workers, s.max_workers) == (1, 2)
    s = mm._settings(startup, {}, "j", "1.0")
    assert (s.min_workers, s.max_workers) == (3, 3)
    s = mm._settings(startup, {}, "m", "1.0")
    assert (s.min_workers, s.max_workers) == (4, 4)
    s = mm._settings(RegisterRequest(url="m.mar"), {}, "m", "1.0")
    assert (s.min_workers, s.max_workers) == (5, 5)   # a register call: the config key
    s = mm._settings(RegisterRequest(url="m.mar", initial_workers=2), pinned, "m", "1.0")
    assert s.min_workers == 2


def test_redispatch_is_on_unless_the_model_or_the_global_setting_opts_out(tmp_path):
    on = manager(tmp_path)._settings(RegisterRequest(url="m.mar"), {}, "m", "1.0")
    assert on.redispatch is True
    off = {"redispatchOnWorkerDeath": False}
    assert manager(tmp_path)._settings(RegisterRequest(url="m.mar"), off, "m", "1.0"
                                       ).redispatch is False
    globally_off = manager(tmp_path, redispatch_on_worker_death="false")
    assert globally_off._settings(RegisterRequest(url="m.mar"), {}, "m", "1.0"
                                  ).redispatch is False
    yaml_on = {"redispatchOnWorkerDeath": True}   # the model's own key beats the global one
    assert globally_off._settings(RegisterRequest(url="m.mar"), yaml_on, "m", "1.0"
                                  ).redispatch is True
    quoted = {"redispatchOnWorkerDeath": "false"}   # a quoted YAML value reads as written
    assert manager(tmp_path)._settings(RegisterRequest(url="m.mar"), quoted, "m", "1.0"
                                       ).redispatch is False
    models = json.dumps({"m": {"1.0": {"redispatchOnWorkerDeath": False}}})
    assert manager(tmp_path, models=models)._settings(
        RegisterRequest(url="m.mar"), {}, "m", "1.0").redispatch is False


def test_a_yaml_minworkers_below_one_is_one_as_torchserve_reads_it(tmp_path):
    """TorchServe's ModelConfig raises a YAML minWorkers below 1 to 1, so an archive with
    `minWorkers: 0, maxWorkers: 2` serves there; a register call, the `models` JSON and a
    restored snapshot (explicit, as a register call) may still keep a version at 0."""
    mm = manager(tmp_path, models=json.dumps({"j": {"1.0": {"minWorkers": 0}}}))
    for low in (0, -3):
        s = mm._settings(RegisterRequest(url="m.mar"), {"minWorkers": low, "maxWorkers": 2},
                         "m", "1.0")
        assert (s.min_workers, s.max_workers) == (1, 2)
    s = mm._settings(RegisterRequest(url="m.mar"), {"minWorkers": 0}, "m", "1.0")
    assert (s.min_workers, s.max_workers) == (1, 1)
    s = mm._settings(RegisterRequest(url="m.mar", initial_workers=0),
                     {"minWorkers": 0, "maxWorkers": 2}, "m", "1.0")
    assert s.min_workers == 0
    s = mm._settings(RegisterRequest(url="m.mar"), {}, "j", "1.0")
    assert s.min_workers == 0
