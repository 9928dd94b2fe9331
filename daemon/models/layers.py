"""Reading one model setting from its layers (register parameters, model-config.yaml, the
``models`` JSON, the global keys; the first that sets a usable value wins), with TorchServe's
types: settings are Java ints there, so a value beyond one counts as unset."""
from __future__ import annotations

import math
from typing import Any

from daemon.config.values import parse_bool

JAVA_INT = range(-2**31, 2**31)


def first_size(layers: list[dict[str, Any]], key: str, default: int) -> int:
    """A byte count may exceed a Java int; still, only finite non-negative numbers count."""
    for layer in layers:
        value = layer.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value) and value >= 0:
            return int(value)
    return default


def java_int(value: Any) -> int | None:
    """``value`` as an int if it fits a Java int (TorchServe's type for these settings), else
    None: a YAML ``.inf`` or ``1e30`` is as unusable as a missing value (and could not even be
    sent to a worker)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number in JAVA_INT else None


def first_bool(layers: list[dict[str, Any]], key: str, default: bool) -> bool:
    """A boolean from the first layer that sets one: YAML/JSON true/false, or a string read as
    config.properties reads booleans (only a case-insensitive "true" is true)."""
    for layer in layers:
        value = layer.get(key)
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            return parse_bool(value)
    return default


YAML_KEYS = ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout",
             "startupTimeout", "jobQueueSize", "maxRequestsPerWorker", "maxWorkerRss",
             "workerThreads")


def yaml_settings(yaml_config: dict) -> dict[str, Any]:
    return {key: yaml_config[key] for key in YAML_KEYS
            if isinstance(yaml_config.get(key), (int, float)) and not isinstance(
                yaml_config.get(key), bool)}
