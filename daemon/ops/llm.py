"""``torchd llm --model-dir DIR``: TorchServe's ``ts.llm_launcher`` in one command (its flag
spellings too: daemon/ops/llm_launcher_flags.py).

It writes a no-archive model directory for DIR (what ``torch-model-archiver --archive-format
no-archive`` writes: ``MAR-INF/MANIFEST.json`` naming the built-in ``text_generation`` handler,
and a model-config.yaml that points the handler at DIR and turns continuous batching on; with
``--engine vllm``, the launcher's ``vllm_handler`` and its model config) into the model
store, then serves it as ``torchd serve --models NAME=NAME`` would: every ``serve`` option
applies, and OpenAI's routes (daemon/http/openai_api.py) answer for NAME. DIR itself is only
ever read, by the worker.

The model store is the configured one (``--model-store``, config.properties, TS_MODEL_STORE),
else a directory of torchd's own in the temp dir, removed at exit; it is named like the
daemon's runtime directories, so one left by a daemon killed with SIGKILL is removed by the
next daemon. As ts.llm_launcher (``no_config_snapshots``), no snapshot is restored (unless
``--ncs false`` says so) or written: a snapshot naming a temporary model store would stop the
next ``torchd serve`` in this directory from starting.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from daemon.config.model_values import parse_models_json
from daemon.config.settings import Config
from daemon.models.archives import MANIFEST_PATH
from daemon.ops.foreground import configure_logging, serve
from daemon.ops.llm_launcher_flags import (DEFAULT_BATCH_SIZES, LAUNCHER_SETTING_ALIASES,
                                           TEXT_GENERATION, TIMEOUT_S, TRT_LLM,
                                           TRT_LLM_OPTIONS, VLLM, VLLM_ONLY_OPTIONS,
                                           add_llm_options)
from daemon.ops.options import build_parser, config_from_args
from daemon.osutil import keep_from_cleaners

logger = logging.getLogger(__name__)

# The manifest's handler per engine: built-in handlers (worker/ts/torch_handler/), named as
# ts.llm_launcher names vLLM's.
HANDLERS = {TEXT_GENERATION: "text_generation", VLLM: "vllm_handler"}
MODEL_VERSION = "1.0"
CONFIG_FILE = "model-config.yaml"
DEFAULT_BATCH_SIZE = DEFAULT_BATCH_SIZES[TEXT_GENERATION]
# A first request waits at most this long for others to start the running batch with it; any
# later one joins between decode steps, so a longer wait would only delay its first token.
MAX_BATCH_DELAY_MS = 5
# ts.llm_launcher's for vLLM: one request a batch (vLLM batches inside its engine), each sent
# to the async worker as it comes.
VLLM_BATCH_SIZE = 1
VLLM_MAX_BATCH_DELAY_MS = 100
# Why the text_generation handler has no use for vLLM's options.
VLLM_ONLY_WHY = {
    "--vllm_engine.max_model_len": "the text_generation handler's context is the model's own "
                                   "(config.json's max_position_embeddings)",
    "--vllm_engine.download_dir": "the text_generation handler reads the model from its "
                                  "directory and downloads nothing"}
# torch-model-archiver's rule for model names
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")
_NOT_NAME_CHAR = re.compile(r"[^A-Za-z0-9_\-.]")
# The manifest's archiverVersion: marks a model directory this command wrote (and may rewrite).
WRITER = "torchd llm"


class LlmError(Exception):
    """The command cannot serve what it was given; the message says why."""


@dataclass(frozen=True)
class LlmModel:
    """What the command serves: the model's directory, its name, the engine that runs it and
    its settings (``batch_size``: the running batch's limit, vLLM's max_num_seqs)."""

    model_dir: Path
    name: str
    batch_size: int = DEFAULT_BATCH_SIZE
    dtype: str | None = None
    engine: str = TEXT_GENERATION
    startup_timeout: int = TIMEOUT_S
    max_model_len: int | None = None     # vLLM only
    download_dir: Path | None = None     # vLLM only

    def model_config(self) -> dict[str, Any]:
        if self.engine == VLLM:
            return self._vllm_config()
        handler: dict[str, Any] = {"model_path": str(self.model_dir)}
        if self.dtype:
            handler["dtype"] = self.dtype
        return {"minWorkers": 1, "maxWorkers": 1, "batchSize": self.batch_size,
                "maxBatchDelay": MAX_BATCH_DELAY_MS, "responseTimeout": TIMEOUT_S,
                "startupTimeout": self.startup_timeout, "continuousBatching": True,
                "handler": handler}

    def _vllm_config(self) -> dict[str, Any]:
        """ts.llm_launcher's model config for vLLM, on one GPU (torchd gives a worker one at
        most, so no parallelLevel and a tensor_parallel_size of 1), and torchd's own
        maxBatchesInFlight (default 64) raised to max_num_seqs: vLLM's running batch fills."""
        engine: dict[str, Any] = {
            "max_num_seqs": self.batch_size, "max_model_len": self.max_model_len,
            "download_dir": None if self.download_dir is None else str(self.download_dir),
            "tensor_parallel_size": 1}
        if self.dtype:
            engine["dtype"] = self.dtype
        return {"minWorkers": 1, "maxWorkers": 1, "batchSize": VLLM_BATCH_SIZE,
                "maxBatchDelay": VLLM_MAX_BATCH_DELAY_MS, "responseTimeout": TIMEOUT_S,
                "startupTimeout": self.startup_timeout, "asyncCommunication": True,
                "maxBatchesInFlight": self.batch_size,
                "handler": {"model_path": str(self.model_dir), "vllm_engine_config": engine}}

    def manifest(self) -> dict[str, Any]:
        return {"createdOn": time.strftime("%d/%m/%Y %H:%M:%S"), "runtime": "python",
                "model": {"modelName": self.name, "modelVersion": MODEL_VERSION,
                          "handler": HANDLERS[self.engine], "configFile": CONFIG_FILE},
                "archiverVersion": WRITER}


def build_llm_parser() -> argparse.ArgumentParser:
    # it runs in the foreground, as serve
    parser = build_parser(modes=False, aliases=LAUNCHER_SETTING_ALIASES)
    parser.prog = "torchd llm"
    parser.usage = "torchd llm --model-dir DIR [--model-name NAME] [--engine ENGINE] [options]"
    parser.description = ("Serve a Hugging Face causal LM directory with the text_generation "
                          "handler and continuous batching (or with vLLM: --engine vllm), with "
                          "OpenAI's API on the inference port (/v1/completions, "
                          "/v1/chat/completions, /v1/models). Every `torchd serve` option "
                          "applies, and so do TorchServe's ts.llm_launcher spellings.")
    parser.epilog = None
    add_llm_options(parser)
    return parser


def model_name_for(model_dir: Path, given: str | None) -> str:
    """``given`` if it is a valid model name, else the directory's name made into one."""
    if given is not None:
        if not MODEL_NAME.match(given):
            raise LlmError(f"--model-name {given!r} is not a model name: letters, digits, '_', "
                           "'-' and '.', starting with a letter or digit")
        return given
    name = _NOT_NAME_CHAR.sub("_", model_dir.name).lstrip("_-.")
    return name or "model"


def write_model_dir(store: Path, model: LlmModel) -> Path:
    """``store/<name>``: the manifest and the model config (rewritten if this command wrote
    them before); LlmError when that is the model's own directory, inside it, or a directory
    of something else."""
    target = (store / model.name).resolve()
    if target == model.model_dir or model.model_dir in target.parents:
        raise LlmError(f"the model directory {model.model_dir} would be written into; give "
                       "another --model-store")
    if target.exists() and not written_here(target):
        raise LlmError(f"{target} exists and was not written by torchd llm; give another "
                       "--model-name or --model-store")
    (target / MANIFEST_PATH).parent.mkdir(parents=True, exist_ok=True)
    (target / CONFIG_FILE).write_text(yaml.safe_dump(model.model_config(), sort_keys=False))
    (target / MANIFEST_PATH).write_text(json.dumps(model.manifest(), indent=2) + "\n")
    return target


def written_here(target: Path) -> bool:
    try:
        manifest = json.loads((target / MANIFEST_PATH).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("archiverVersion") == WRITER


def llm_model(args: argparse.Namespace) -> LlmModel:
    """What the parsed options ask to serve; LlmError when it cannot be served."""
    engine = checked_engine(args)
    model_dir = checked_model_dir(args)
    batch_size = DEFAULT_BATCH_SIZES[engine] if args.batch_size is None else args.batch_size
    if batch_size < 1:
        raise LlmError(f"--batch-size {batch_size}: must be at least 1")
    if args.startup_timeout < 1:
        raise LlmError(f"--startup-timeout {args.startup_timeout}: must be at least 1")
    download_dir = args.download_dir and args.download_dir.expanduser().resolve()
    return LlmModel(model_dir, model_name_for(model_dir, args.model_name), batch_size,
                    args.dtype, engine, args.startup_timeout, args.max_model_len, download_dir)


def checked_engine(args: argparse.Namespace) -> str:
    """``--engine``; LlmError for TensorRT-LLM, and for vLLM's options with another engine."""
    given = [option for option, dest in TRT_LLM_OPTIONS.items()
             if getattr(args, dest) is not None]
    if args.engine == TRT_LLM:
        given.insert(0, f"--engine {TRT_LLM}")
    if given:
        raise LlmError(f"{', '.join(given)}: TensorRT-LLM is not supported by torchd; serve "
                       f"the model with --engine {TEXT_GENERATION} (the default) or --engine "
                       f"{VLLM}")
    if args.engine != VLLM:
        for option, dest in VLLM_ONLY_OPTIONS.items():
            if getattr(args, dest) is not None:
                raise LlmError(f"{option} needs --engine {VLLM}: {VLLM_ONLY_WHY[option]}")
    return str(args.engine)


def checked_model_dir(args: argparse.Namespace) -> Path:
    """The model's directory, resolved; LlmError when it is not one (``--model_id``: a model
    hub's id, which torchd does not download)."""
    if args.model_id is None:
        model_dir = args.model_dir.expanduser().resolve()
        if not model_dir.is_dir():
            raise LlmError(f"--model-dir {args.model_dir}: not a directory")
        return model_dir
    model_dir = Path(args.model_id).expanduser().resolve()
    if not model_dir.is_dir():
        raise LlmError(f"--model_id {args.model_id}: not a directory; torchd serves a local "
                       "model directory and downloads nothing from a model hub: download it "
                       f"first (huggingface-cli download {args.model_id} --local-dir DIR), "
                       "then give --model_id DIR")
    return model_dir


def check_engine_installed(engine: str,
                           find_spec: Callable[[str], Any] = importlib.util.find_spec) -> None:
    """LlmError when ``--engine vllm`` names a vLLM this Python (the workers') does not have:
    the worker would fail to load the model, leaving a daemon that serves nothing."""
    if engine == VLLM and find_spec("vllm") is None:
        raise LlmError(f"--engine {VLLM}: vLLM is not installed in this Python "
                       f"({sys.executable}); install it on a GPU machine (pip install vllm), "
                       f"or serve the model with --engine {TEXT_GENERATION} (the default)")


def serving_config(config: Config, model: LlmModel, store: Path) -> Config:
    """``config`` serving ``model`` from ``store`` as a startup model, with the workers its
    model config asks for (the ``models`` JSON naming them lets model-config.yaml's count:
    daemon/ops/startup.py), and no snapshot restored (unless asked) nor written."""
    load_models = config.load_models
    if not config.load_all_models:   # with "all", the store's every model is ours already
        load_models = (*load_models, f"{model.name}={model.name}")
    workers = parse_models_json({model.name: {MODEL_VERSION: {"minWorkers": 1,
                                                              "maxWorkers": 1}}})
    versions = dict(config.models.get(model.name, {}))   # what the user's JSON says wins
    versions[MODEL_VERSION] = {**workers[model.name][MODEL_VERSION],
                               **versions.get(MODEL_VERSION, {})}
    ncs = True if config.sources.get("ncs") == "default" else config.ncs
    return config.with_overrides(model_store=store, load_models=load_models, ncs=ncs,
                                 models={**config.models, model.name: versions},
                                 write_snapshots=False)


def cmd_llm(argv: Sequence[str]) -> int:
    parser = build_llm_parser()
    args = parser.parse_args(list(argv))
    configure_logging(None, args.log_level)
    config = config_from_args(args)
    if config is None:
        return 2
    own_store = None
    try:
        model = llm_model(args)
        check_engine_installed(model.engine)
        if config.model_store is None:
            from daemon.ops.process import RUNTIME_PREFIX   # the daemon's
            own_store = Path(tempfile.mkdtemp(prefix=f"{RUNTIME_PREFIX}{os.getpid()}-llm-"))
            keep_from_cleaners(own_store)   # for the process's life: its workers read it
        store = config.model_store or own_store
        assert store is not None
        target = write_model_dir(store, model)
    except (LlmError, OSError) as exc:
        print(f"torchd llm: {exc}", file=sys.stderr)
        if own_store is not None:
            shutil.rmtree(own_store, ignore_errors=True)
        return 2
    logger.info("serving %s as model %s with %s (model directory %s); OpenAI's API at %s/v1",
                model.model_dir, model.name, HANDLERS[model.engine], target,
                config.inference_address.url)
    try:
        return serve(serving_config(config, model, store), args.log_level)
    finally:
        if own_store is not None:
            shutil.rmtree(own_store, ignore_errors=True)
