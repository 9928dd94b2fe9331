"""``torchd llm --model-dir DIR``: TorchServe's ``ts.llm_launcher`` in one command.

It writes a no-archive model directory for DIR (what ``torch-model-archiver --archive-format
no-archive`` writes: ``MAR-INF/MANIFEST.json`` naming the built-in ``text_generation`` handler,
and a model-config.yaml that points the handler at DIR and turns continuous batching on) into
the model store, then serves it as ``torchd serve --models NAME=NAME`` would: every ``serve``
option applies, and OpenAI's routes (daemon/http/openai_api.py) answer for NAME. DIR itself is
only ever read, by the worker.

The model store is the configured one (``--model-store``, config.properties, TS_MODEL_STORE),
else a directory of torchd's own in the temp dir, removed at exit; it is named like the
daemon's runtime directories, so one left by a daemon killed with SIGKILL is removed by the
next daemon. As ts.llm_launcher (``no_config_snapshots``), no snapshot is restored (unless
``--ncs false`` says so) or written: a snapshot naming a temporary model store would stop the
next ``torchd serve`` in this directory from starting.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from daemon.config.model_values import parse_models_json
from daemon.config.settings import Config
from daemon.models.archives import MANIFEST_PATH
from daemon.ops.foreground import configure_logging, serve
from daemon.ops.options import build_parser, config_from_args

logger = logging.getLogger(__name__)

HANDLER = "text_generation"
MODEL_VERSION = "1.0"
CONFIG_FILE = "model-config.yaml"
DEFAULT_BATCH_SIZE = 32
# A first request waits at most this long for others to start the running batch with it; any
# later one joins between decode steps, so a longer wait would only delay its first token.
MAX_BATCH_DELAY_MS = 5
# ts.llm_launcher's responseTimeout and startupTimeout: loading a large model, or a step that
# prefills long prompts on CPUs, may take minutes.
TIMEOUT_S = 1200
# torch-model-archiver's rule for model names
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")
_NOT_NAME_CHAR = re.compile(r"[^A-Za-z0-9_\-.]")
# The manifest's archiverVersion: marks a model directory this command wrote (and may rewrite).
WRITER = "torchd llm"


class LlmError(Exception):
    """The command cannot serve what it was given; the message says why."""


@dataclass(frozen=True)
class LlmModel:
    """What the command serves: the model's directory, its name, and its handler settings."""

    model_dir: Path
    name: str
    batch_size: int = DEFAULT_BATCH_SIZE
    dtype: str | None = None

    def model_config(self) -> dict[str, Any]:
        handler: dict[str, Any] = {"model_path": str(self.model_dir)}
        if self.dtype:
            handler["dtype"] = self.dtype
        return {"minWorkers": 1, "maxWorkers": 1, "batchSize": self.batch_size,
                "maxBatchDelay": MAX_BATCH_DELAY_MS, "responseTimeout": TIMEOUT_S,
                "startupTimeout": TIMEOUT_S, "continuousBatching": True, "handler": handler}

    def manifest(self) -> dict[str, Any]:
        return {"createdOn": time.strftime("%d/%m/%Y %H:%M:%S"), "runtime": "python",
                "model": {"modelName": self.name, "modelVersion": MODEL_VERSION,
                          "handler": HANDLER, "configFile": CONFIG_FILE},
                "archiverVersion": WRITER}


def build_llm_parser() -> argparse.ArgumentParser:
    parser = build_parser(modes=False)   # it runs in the foreground, as serve
    parser.prog = "torchd llm"
    parser.usage = "torchd llm --model-dir DIR [--model-name NAME] [options]"
    parser.description = ("Serve a Hugging Face causal LM directory with the text_generation "
                          "handler and continuous batching, with OpenAI's API on the inference "
                          "port (/v1/completions, /v1/chat/completions, /v1/models). Every "
                          "`torchd serve` option applies.")
    parser.epilog = None
    group = parser.add_argument_group("language model")
    group.add_argument("--model-dir", required=True, type=Path, metavar="DIR",
                       help="the model's directory (config.json, weights, tokenizer), as "
                            "save_pretrained writes it; only read")
    group.add_argument("--model-name", metavar="NAME",
                       help="the model's name (OpenAI's `model`); default: the directory's "
                            "name, in the characters a model name may have")
    group.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N",
                       help=f"most sequences in the running batch (default "
                            f"{DEFAULT_BATCH_SIZE})")
    group.add_argument("--dtype", metavar="DTYPE",
                       help="the weights' dtype on the worker's device (handler.dtype, e.g. "
                            "bf16 or fp16); default: the handler's")
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
    model_dir = args.model_dir.expanduser().resolve()
    if not model_dir.is_dir():
        raise LlmError(f"--model-dir {args.model_dir}: not a directory")
    if args.batch_size < 1:
        raise LlmError(f"--batch-size {args.batch_size}: must be at least 1")
    return LlmModel(model_dir, model_name_for(model_dir, args.model_name), args.batch_size,
                    args.dtype)


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
        if config.model_store is None:
            from daemon.ops.server import RUNTIME_PREFIX   # the daemon's, imported as serve does
            own_store = Path(tempfile.mkdtemp(prefix=f"{RUNTIME_PREFIX}{os.getpid()}-llm-"))
        store = config.model_store or own_store
        assert store is not None
        target = write_model_dir(store, model)
    except (LlmError, OSError) as exc:
        print(f"torchd llm: {exc}", file=sys.stderr)
        if own_store is not None:
            shutil.rmtree(own_store, ignore_errors=True)
        return 2
    logger.info("serving %s as model %s (model directory %s); OpenAI's API at %s/v1",
                model.model_dir, model.name, target, config.inference_address.url)
    try:
        return serve(serving_config(config, model, store), args.log_level)
    finally:
        if own_store is not None:
            shutil.rmtree(own_store, ignore_errors=True)
