"""daemon.ops.llm: the model directory ``torchd llm`` writes, the name it serves it under, the
Config it serves it with, and what it refuses. Served for real: test_openai_llm.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from daemon.config.settings import load_config
from daemon.models.archives import prepare_archive
from daemon.ops.llm import (LlmError, LlmModel, build_llm_parser, llm_model, model_name_for,
                            serving_config, write_model_dir)
from daemon.ops.options import argv_options


def parsed(*argv: str):
    return build_llm_parser().parse_args(list(argv))


@pytest.mark.parametrize(("dirname", "name"), [
    ("tiny-llm", "tiny-llm"), ("Llama 3.1 8B", "Llama_3.1_8B"), (".hidden", "hidden"),
    ("__x", "x"), ("été", "t_"), ("...", "model"),
])
def test_the_name_is_the_directorys_in_a_model_names_characters(dirname: str,
                                                                 name: str) -> None:
    assert model_name_for(Path("/models") / dirname, None) == name


def test_a_given_name_must_be_a_model_name() -> None:
    assert model_name_for(Path("/m/x"), "chat.v2") == "chat.v2"
    for bad in ("-x", "a/b", "a b", ""):
        with pytest.raises(LlmError, match="is not a model name"):
            model_name_for(Path("/m/x"), bad)


def test_the_model_directory_holds_a_manifest_and_a_model_config(tmp_path: Path) -> None:
    model_dir = tmp_path / "weights"
    model_dir.mkdir()
    store = tmp_path / "store"
    target = write_model_dir(store, LlmModel(model_dir, "tiny", batch_size=8, dtype="bf16"))
    assert target == store / "tiny"
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == [
        "MAR-INF", "MAR-INF/MANIFEST.json", "model-config.yaml"]
    assert list(model_dir.iterdir()) == []   # never written into
    manifest = json.loads((target / "MAR-INF/MANIFEST.json").read_text())
    assert manifest["model"] == {"modelName": "tiny", "modelVersion": "1.0",
                                 "handler": "text_generation",
                                 "configFile": "model-config.yaml"}
    assert manifest["runtime"] == "python"
    config = yaml.safe_load((target / "model-config.yaml").read_text())
    assert config == {"minWorkers": 1, "maxWorkers": 1, "batchSize": 8, "maxBatchDelay": 5,
                      "responseTimeout": 1200, "startupTimeout": 1200,
                      "continuousBatching": True,
                      "handler": {"model_path": str(model_dir), "dtype": "bf16"}}
    # what the daemon reads of it, as of any no-archive directory in the store
    prepared = prepare_archive("tiny", model_store=store, extract_root=tmp_path / "run",
                               allowed_urls=[])
    assert prepared.model_dir == target and prepared.manifest["model"]["handler"] == \
        "text_generation"
    assert prepared.model_yaml_config == config


def test_it_rewrites_its_own_directory_and_nothing_else(tmp_path: Path) -> None:
    model_dir = tmp_path / "weights"
    model_dir.mkdir()
    store = tmp_path / "store"
    write_model_dir(store, LlmModel(model_dir, "tiny", batch_size=8))
    write_model_dir(store, LlmModel(model_dir, "tiny", batch_size=4))
    assert yaml.safe_load((store / "tiny/model-config.yaml").read_text())["batchSize"] == 4
    (store / "other").mkdir()
    with pytest.raises(LlmError, match="was not written by torchd llm"):
        write_model_dir(store, LlmModel(model_dir, "other"))
    assert list((store / "other").iterdir()) == []


def test_it_never_writes_into_the_model_directory(tmp_path: Path) -> None:
    model_dir = tmp_path / "models" / "tiny"
    model_dir.mkdir(parents=True)
    for store, name in ((tmp_path / "models", "tiny"), (model_dir, "x"),
                        (model_dir / "sub", "x")):
        with pytest.raises(LlmError, match="would be written into"):
            write_model_dir(store, LlmModel(model_dir, name))
    assert list(model_dir.iterdir()) == []


def test_the_options_beside_serves(tmp_path: Path) -> None:
    args = parsed("--model-dir", str(tmp_path), "--model-name", "m", "--batch-size", "4",
                  "--dtype", "fp16", "--inference-address", "http://127.0.0.1:1")
    assert llm_model(args) == LlmModel(tmp_path.resolve(), "m", 4, "fp16")
    assert args.inference_address == "http://127.0.0.1:1"
    assert llm_model(parsed("--model-dir", str(tmp_path))).batch_size == 32
    with pytest.raises(LlmError, match="not a directory"):
        llm_model(parsed("--model-dir", str(tmp_path / "missing")))
    with pytest.raises(LlmError, match="at least 1"):
        llm_model(parsed("--model-dir", str(tmp_path), "--batch-size", "0"))
    with pytest.raises(SystemExit):   # it runs in the foreground, as serve
        parsed("--model-dir", str(tmp_path), "--start")


def test_it_is_served_as_a_startup_model_without_snapshots(tmp_path: Path) -> None:
    model = LlmModel(tmp_path, "tiny")
    store = tmp_path / "store"
    args = parsed("--model-dir", str(tmp_path), "--models", "other=other.mar")
    config = serving_config(load_config(argv_options(args), {}, tmp_path), model, store)
    assert config.model_store == store
    assert config.load_models == ("other=other.mar", "tiny=tiny")
    assert config.ncs and not config.write_snapshots
    # the model config's one worker, not one per CPU (daemon/ops/startup.py)
    assert config.models["tiny"]["1.0"]["minWorkers"] == 1
    args = parsed("--model-dir", str(tmp_path), "--ncs", "false", "--models", "all",
                  "--models-config", '{"tiny": {"1.0": {"maxWorkers": 2}}, "x": {}}')
    config = serving_config(load_config(argv_options(args), {}, tmp_path), model, store)
    assert not config.ncs and config.load_all_models
    assert config.models == {"tiny": {"1.0": {"minWorkers": 1, "maxWorkers": 2}}, "x": {}}
