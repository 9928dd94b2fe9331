"""daemon.ops.llm: the model directory ``torchd llm`` writes, the name it serves it under, the
Config it serves it with, and what it refuses. Served for real: test_openai_llm.py."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from daemon.config.settings import load_config
from daemon.models.archives import prepare_archive
from daemon.models.layers import Layers, resolve_settings
from daemon.models.model_config import refusals
from daemon.ops.llm import (HANDLERS, LlmError, LlmModel, build_llm_parser,
                            check_engine_installed, llm_model, model_name_for, serving_config,
                            write_model_dir)
from daemon.ops.options import argv_options, build_parser

REPO = Path(__file__).resolve().parents[3]


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


# ---- ts.llm_launcher's spellings, engines, refusals ---------------------------------------


def test_the_launchers_spellings_are_torchds_options(tmp_path: Path) -> None:
    store = tmp_path / "store"
    args = parsed("--model_id", str(tmp_path), "--model_name", "llama", "--model_store",
                  str(store), "--disable_token_auth", "--vllm_engine.max_num_seqs", "64",
                  "--startup_timeout", "600", "--dtype", "bf16")
    assert llm_model(args) == LlmModel(tmp_path.resolve(), "llama", 64, "bf16",
                                       startup_timeout=600)
    config = load_config(argv_options(args), {}, tmp_path)
    assert config.model_store == store and not config.token_auth_enabled
    torchds = parsed("--model-dir", str(tmp_path), "--model-name", "llama", "--model-store",
                     str(store), "--disable-token-auth", "--batch-size", "64",
                     "--startup-timeout", "600", "--dtype", "bf16")
    assert vars(torchds) == {**vars(args), "model_dir": tmp_path, "model_id": None}
    for option in ("--model_store", "--disable_token_auth"):   # `torchd llm`'s alone
        with pytest.raises(SystemExit):
            build_parser().parse_args([option, "x"])


def test_exactly_one_of_model_dir_and_model_id(tmp_path: Path) -> None:
    for argv in ((), ("--model-dir", str(tmp_path), "--model_id", str(tmp_path))):
        with pytest.raises(SystemExit):
            parsed(*argv)


def test_a_model_hubs_id_is_refused_with_how_to_download_it(tmp_path: Path) -> None:
    with pytest.raises(LlmError) as refused:
        llm_model(parsed("--model_id", "meta-llama/Llama-3.2-1B"))
    assert "not a directory" in str(refused.value)
    assert "huggingface-cli download meta-llama/Llama-3.2-1B --local-dir DIR" \
        in str(refused.value)
    assert "--model_id DIR" in str(refused.value)


def test_the_startup_timeout_goes_into_the_model_config(tmp_path: Path) -> None:
    args = parsed("--model-dir", str(tmp_path), "--startup_timeout", "300")
    assert llm_model(args).model_config()["startupTimeout"] == 300
    assert llm_model(parsed("--model-dir", str(tmp_path))).model_config()["startupTimeout"] \
        == 1200
    with pytest.raises(LlmError, match="at least 1"):
        llm_model(parsed("--model-dir", str(tmp_path), "--startup-timeout", "0"))


def test_the_vllm_engine_writes_the_launchers_vllm_model(tmp_path: Path) -> None:
    model_dir = tmp_path / "weights"
    model_dir.mkdir()
    args = parsed("--model_id", str(model_dir), "--model_name", "llama", "--engine", "vllm",
                  "--vllm_engine.max_model_len", "512", "--vllm_engine.download_dir",
                  str(tmp_path / "cache"), "--startup_timeout", "600")
    model = llm_model(args)
    assert model.batch_size == 256   # the launcher's max_num_seqs when none is given
    store = tmp_path / "store"
    target = write_model_dir(store, model)
    manifest = json.loads((target / "MAR-INF/MANIFEST.json").read_text())
    assert manifest["model"]["handler"] == "vllm_handler"
    config = yaml.safe_load((target / "model-config.yaml").read_text())
    assert config == {"minWorkers": 1, "maxWorkers": 1, "batchSize": 1, "maxBatchDelay": 100,
                      "responseTimeout": 1200, "startupTimeout": 600,
                      "asyncCommunication": True, "maxBatchesInFlight": 256,
                      "handler": {"model_path": str(model_dir), "vllm_engine_config": {
                          "max_num_seqs": 256, "max_model_len": 512,
                          "download_dir": str(tmp_path / "cache"),
                          "tensor_parallel_size": 1}}}
    prepared = prepare_archive("llama", model_store=store, extract_root=tmp_path / "run",
                               allowed_urls=[])
    assert prepared.model_yaml_config == config
    # as the daemon registers it (daemon/control/manager.py)
    settings = resolve_settings(Layers({}, config, {}), load_config({}, {}, tmp_path),
                                device_type=None, device_ids=())
    assert (settings.async_communication, settings.continuous_batching, settings.batch_size,
            settings.max_batches_in_flight, settings.startup_timeout) == (True, False, 1, 256,
                                                                          600)
    assert refusals(config, settings) == []
    args = parsed("--model-dir", str(model_dir), "--engine", "vllm", "--batch-size", "8",
                  "--dtype", "float16")
    engine = llm_model(args).model_config()["handler"]["vllm_engine_config"]
    assert engine == {"max_num_seqs": 8, "max_model_len": None, "download_dir": None,
                      "tensor_parallel_size": 1, "dtype": "float16"}


@pytest.mark.parametrize("option", ["--vllm_engine.max_model_len",
                                    "--vllm_engine.download_dir"])
def test_vllms_own_options_need_the_vllm_engine(tmp_path: Path, option: str) -> None:
    for engine in ((), ("--engine", "text_generation")):
        with pytest.raises(LlmError, match=f"^{option} needs --engine vllm: the "
                                           "text_generation handler"):
            llm_model(parsed("--model-dir", str(tmp_path), *engine, option, "512"))


@pytest.mark.parametrize("argv", [("--engine", "trt_llm"),
                                  ("--trt_llm_engine.max_batch_size", "4"),
                                  ("--trt_llm_engine.kv_cache_free_gpu_memory_fraction", "0.1")])
def test_tensorrt_llm_is_refused(tmp_path: Path, argv: tuple[str, ...]) -> None:
    with pytest.raises(LlmError, match=f"^{argv[0]}.*: TensorRT-LLM is not supported by "
                                       "torchd"):
        llm_model(parsed("--model-dir", str(tmp_path), *argv))


def test_the_vllm_engine_needs_vllm_installed() -> None:
    found: list[str] = []

    def find_spec(name: str) -> object | None:
        found.append(name)
        return None

    with pytest.raises(LlmError, match="vLLM is not installed in this Python.*pip install "
                                       "vllm.*--engine text_generation"):
        check_engine_installed("vllm", find_spec)
    assert found == ["vllm"]
    check_engine_installed("vllm", lambda name: object())
    check_engine_installed("text_generation", find_spec)
    assert found == ["vllm"]


RESOLVE = textwrap.dedent("""
    import sys
    from worker.ts_alias import install_ts_alias
    install_ts_alias()
    sys.path.insert(0, sys.argv[1])   # the model directory, as in a worker
    from worker.service import import_handler_module
    for name in sys.argv[2:]:
        print(import_handler_module(name).__name__)
""")


def test_the_manifests_handlers_are_torchds_built_in_ones(tmp_path: Path) -> None:
    """As a worker resolves them (worker/service.py); importing vllm_handler needs no vLLM."""
    model = LlmModel(tmp_path / "weights", "m", engine="vllm")
    target = write_model_dir(tmp_path / "store", model)
    run = subprocess.run([sys.executable, "-c", RESOLVE, str(target), *HANDLERS.values()],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["worker.ts.torch_handler.text_generation",
                                  "worker.ts.torch_handler.vllm_handler"]
