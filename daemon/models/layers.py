"""A model version's settings from their layers, as daemon/config/model_settings.py declares them.

Each setting comes from the first layer that sets a usable value: the explicit value (a register
parameter, or a snapshot being restored), the archive's model-config.yaml, the config's ``models``
JSON, the config key that replaces the built-in default for every model (``config`` in the
table), then the built-in default. Explicit values beat the YAML (SPEC 1.2 FIX).

TorchServe's types: these settings are Java ints there, so a value beyond one counts as unset
(a YAML ``.inf`` or ``1e30`` could not even be sent to a worker); the YAML's numeric settings
count only when they are numbers. deviceType and deviceIds are read by daemon/gpus/devices.py,
which checks them against the GPUs.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from daemon.config.model_settings import (MODEL_SETTINGS, READ_CEILING, READ_DEVICE, READ_FLAG,
                                          READ_INT, READ_SECONDS, READ_SIZE, ModelSetting,
                                          ModelSettings, config_default)
from daemon.config.values import parse_bool

JAVA_INT = range(-2**31, 2**31)


@dataclass(frozen=True)
class Layers:
    """Where a version's settings may come from, above the config's global keys."""

    explicit: Mapping[str, Any]     # by field: register parameters / a restored snapshot entry
    yaml: Mapping[str, Any]         # the archive's model-config.yaml, as read
    json: Mapping[str, Any]         # the config's ``models`` JSON entry (already parsed)


def explicit_values(request: Any) -> dict[str, Any]:
    """A RegisterRequest's explicit settings by field (None: not given)."""
    return {s.field: getattr(request, s.request) for s in MODEL_SETTINGS if s.request}


def resolve_settings(layers: Layers, config: Any, **devices: Any) -> ModelSettings:
    """Every setting of the table from ``layers``; ``devices`` gives the READ_DEVICE ones."""
    layers = Layers(layers.explicit, yaml_as_torchserve_reads_it(layers.yaml), layers.json)
    values: dict[str, Any] = dict(devices)
    for setting in MODEL_SETTINGS:
        if setting.read != READ_DEVICE:
            read = _READERS[setting.read]
            values[setting.field] = read(setting, layers, config_default(setting, config),
                                         values)
    return ModelSettings(**values)


def yaml_as_torchserve_reads_it(yaml: Mapping[str, Any]) -> Mapping[str, Any]:
    """TorchServe's ModelConfig raises a model-config.yaml minWorkers below 1 to 1: an archive
    saying ``minWorkers: 0, maxWorkers: 2`` serves with one worker there, so it does here (the
    ``models`` JSON, a register call and a snapshot may still keep a version at 0)."""
    low = java_int(_number(yaml.get("minWorkers")))
    return {**yaml, "minWorkers": 1} if low is not None and low < 1 else yaml


def java_int(value: Any) -> int | None:
    """``value`` as an int if it fits a Java int (TorchServe's type for these settings), else
    None: a YAML ``.inf`` or ``1e30`` is as unusable as a missing value."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number in JAVA_INT else None


def _number(value: Any) -> Any:
    """A YAML value that is a number (a quoted "4" is not one), else None."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _first_int(explicit: Any, key: str, layers: Layers, default: Any) -> int:
    for value in (explicit, _number(layers.yaml.get(key)), layers.json.get(key)):
        number = java_int(value)
        if number is not None:
            return number
    return int(default)


def _read_int(setting: ModelSetting, layers: Layers, default: Any,
              resolved: dict[str, Any]) -> int:
    value = _first_int(layers.explicit.get(setting.field), setting.key, layers, default)
    return value if setting.floor is None else max(setting.floor, value)


def _read_seconds(setting: ModelSetting, layers: Layers, default: Any,
                  resolved: dict[str, Any]) -> int:
    """TorchServe clients send -1 for "the default"; no timeout can be 0 s or less."""
    explicit = layers.explicit.get(setting.field)
    if explicit == 0 and setting.explicit_zero:
        return 0
    value = _first_int(explicit if explicit is None or explicit > 0 else None, setting.key,
                       layers, default)
    return value if value > 0 else int(default)


def _read_ceiling(setting: ModelSetting, layers: Layers, default: Any,
                  resolved: dict[str, Any]) -> int:
    """maxWorkers: at least minWorkers; unset, the workers asked for (register's
    initial_workers), as TorchServe."""
    low = resolved["min_workers"]
    asked = layers.explicit.get("min_workers")
    explicit = layers.explicit.get(setting.field)
    value = _first_int(asked if explicit is None else explicit, setting.key, layers,
                       max(low, asked or 0))
    return max(low, value)


def _read_size(setting: ModelSetting, layers: Layers, default: Any,
               resolved: dict[str, Any]) -> int:
    """A byte count may exceed a Java int; still, only finite non-negative numbers count."""
    for value in (_number(layers.yaml.get(setting.key)), layers.json.get(setting.key)):
        if isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value) and value >= 0:
            return int(value)
    return default


def _read_flag(setting: ModelSetting, layers: Layers, default: Any,
               resolved: dict[str, Any]) -> bool:
    """A boolean from the first layer that sets one: YAML/JSON true/false, or a string read as
    config.properties reads booleans."""
    for value in (layers.yaml.get(setting.key), layers.json.get(setting.key)):
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            return parse_bool(value)
    return default


_READERS: dict[str, Callable[[ModelSetting, Layers, Any, dict[str, Any]], Any]] = {
    READ_INT: _read_int, READ_SECONDS: _read_seconds, READ_CEILING: _read_ceiling,
    READ_SIZE: _read_size, READ_FLAG: _read_flag,
}
