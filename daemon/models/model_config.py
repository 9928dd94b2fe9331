"""Which model-config.yaml keys torchd leaves unimplemented, and which settings it refuses.

TorchServe's frontend acts on a fixed set of model-config.yaml keys; torchd implements most of
them (and a few of its own, see daemon/config/model_settings.py). What is left falls in two
kinds (SPEC 6):

- Keys that would change what the answers mean, or whether there are any: a model asking for
  them is refused at register with a 400 naming them (:func:`refusals`), and nothing of it is
  kept. Tensor and pipeline parallelism (``parallelType`` pp, tp or pptp with a
  ``parallelLevel``, or torchrun's ``nproc-per-node``, above 0: TorchServe starts the worker
  under torchrun as that many ranks; ``custom`` above 1: one process that sees that many GPUs):
  torchd starts one process per worker, on one GPU at most. Two combinations TorchServe accepts
  and then serves nothing meaningful with are refused too: ``sequenceBatching`` without a
  ``sequenceMaxIdleMSec`` above 0 (TorchServe then answers every request 503), and
  ``continuousBatching`` with ``asyncCommunication``.
- Keys that only tune how TorchServe runs, with the answers unchanged (:data:`UNIMPLEMENTED_KEYS`):
  ``useVenv`` (torchd's own isolation is install_py_dep_per_model), and the parallel keys where
  TorchServe ignores them as well (no ``parallelType`` it knows, or a level of 0). Register
  warns once naming them all, and describe lists them (``ignoredConfigKeys``).

Keys TorchServe's frontend does not know either (a ``handler:`` section, anything a handler
reads for itself) are the handler's business: they reach it in ``context.model_yaml_config``
like every key, and are not named.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from daemon.config.model_settings import ModelSettings
from daemon.errors import BadRequest

logger = logging.getLogger(__name__)

# TorchServe 0.12's frontend keys (ModelConfig) torchd does not implement; a model that uses
# them so that they would matter is refused (refusals), else they are ignored with a warning.
UNIMPLEMENTED_KEYS = ("parallelType", "parallelLevel", "torchrun", "useVenv")
SPLIT_TYPES = ("pp", "tp", "pptp")   # ParallelType values run under torchrun; "custom" is not
JAVA_INT = range(-2**31, 2**31)


class ConfigRefused(BadRequest):
    """A model's settings ask for what torchd does not implement: refused at register."""


def ignored_config_keys(yaml_config: Mapping[str, Any]) -> list[str]:
    """The keys of ``yaml_config`` torchd does not implement, in the file's order."""
    return [key for key in yaml_config if key in UNIMPLEMENTED_KEYS]


def warn_ignored_keys(name: str, version: str, yaml_config: Mapping[str, Any]) -> None:
    """The one warning at register naming every key ``ignored_config_keys`` finds."""
    ignored = ignored_config_keys(yaml_config)
    if ignored:
        logger.warning("model %s %s: torchd does not implement these model-config.yaml keys, "
                       "which are ignored: %s", name, version, ", ".join(ignored))


def check_config(name: str, version: str, yaml_config: Mapping[str, Any],
                 settings: ModelSettings) -> None:
    """Raise ConfigRefused (400) naming every reason of :func:`refusals`, if there is one."""
    reasons = refusals(yaml_config, settings)
    if reasons:
        raise ConfigRefused(f'Model "{name}" version {version} cannot be served as configured: '
                            + "; ".join(reasons))


def refusals(yaml_config: Mapping[str, Any], settings: ModelSettings) -> list[str]:
    """Why torchd cannot serve a model as its settings say, one reason each naming its keys;
    empty when it can. The serving modes are read from ``settings`` (resolved from every
    layer), the parallel keys, which are not settings, from the YAML."""
    reasons = _parallel_refusals(yaml_config)
    if settings.sequence_batching and settings.sequence_max_idle_ms <= 0:
        reasons.append("sequenceBatching needs sequenceMaxIdleMSec above 0 (TorchServe answers "
                       "every request of such a model 503)")
    if settings.continuous_batching and settings.async_communication:
        reasons.append("continuousBatching and asyncCommunication cannot both be true")
    return reasons


def _parallel_refusals(yaml_config: Mapping[str, Any]) -> list[str]:
    """TorchServe (Model, WorkerLifeCycle) runs several ranks only with a ParallelType it knows
    and a parallel level above 0; the level is set by ``parallelLevel`` or by torchrun's
    ``nproc-per-node`` (1 when torchrun does not say), whichever comes last in the file."""
    kind, level, source = "", 0, ""
    for key, value in yaml_config.items():
        if key == "parallelType" and isinstance(value, str):
            kind = value.lower()
        elif key == "parallelLevel" and _java_int(value):
            level, source = max(0, value), "parallelLevel"
        elif key == "torchrun" and isinstance(value, Mapping):
            nproc: Any = value.get("nproc-per-node")
            level = nproc if _java_int(nproc) and nproc > 0 else 1
            source = "torchrun nproc-per-node"
    if level <= 0:
        return []
    if kind in SPLIT_TYPES:
        return [f"parallelType {kind} with {source} {level} (TorchServe runs the handler as "
                f"{level} torchrun rank(s); torchd runs one process per worker)"]
    if kind == "custom" and level > 1:
        return [f"parallelType custom with {source} {level} (the handler expects {level} "
                "GPUs; torchd gives a worker one at most)"]
    return []


def _java_int(value: Any) -> bool:
    """A YAML integer TorchServe reads as one (an Integer: not a bool, not beyond 32 bits)."""
    return isinstance(value, int) and not isinstance(value, bool) and value in JAVA_INT


def compiles(model_yaml_config: dict[str, Any]) -> bool:
    """Whether a model-config.yaml asks BaseHandler for torch.compile (``pt2`` in one of the
    forms TorchServe 0.12 reads: a backend name, ``compile: {enable: true}``, or the older
    dict of torch.compile's arguments; ``export`` compiles nothing)."""
    pt2 = model_yaml_config.get("pt2") if isinstance(model_yaml_config, dict) else None
    if isinstance(pt2, str):
        return bool(pt2)
    if not isinstance(pt2, dict):
        return False
    if "compile" in pt2:
        return isinstance(pt2["compile"], dict) and pt2["compile"].get("enable") is True
    return "export" not in pt2
