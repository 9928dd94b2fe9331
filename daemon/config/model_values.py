"""Per-model settings as config values: the ``models`` JSON and TorchServe's ``model_snapshot``,
whose entries set the keys of daemon/config/model_settings.py's table."""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from daemon.config.model_settings import BY_FIELD, MODEL_SETTINGS
from daemon.config.values import InvalidValue, parse_bool, parse_str

logger = logging.getLogger(__name__)


# models JSON: {name: {version: {key: value}}}: every model setting's key (daemon/config/
# model_settings.py), and the two that place a version: its archive and whether it is the default
_MODEL_KEYS: dict[str, Callable[[Any], Any]] = {
    **{setting.key: setting.parse for setting in MODEL_SETTINGS},
    "marName": parse_str,
    "defaultVersion": parse_bool,
}
_MIN_KEY, _MAX_KEY = BY_FIELD["min_workers"].key, BY_FIELD["max_workers"].key
# TorchServe writes runtimeType into its snapshots (torchd's register checks the value)
_SNAPSHOT_KEYS = {**_MODEL_KEYS, "runtimeType": parse_str}


def parse_models_json(value: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """``{"name": {"version": {"minWorkers": 1, ...}}}``; typed and checked per key."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InvalidValue(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidValue("expected a JSON object {model: {version: {...}}}")
    models: dict[str, dict[str, dict[str, Any]]] = {}
    for name, versions in value.items():
        if not isinstance(versions, dict):
            raise InvalidValue(f"model {name!r}: expected an object of versions")
        models[name] = {}
        for version, settings in versions.items():
            models[name][str(version)] = _parse_model_settings(name, str(version), settings)
    return models


def parse_model_snapshot(value: Any) -> dict[str, Any] | None:
    """TorchServe's ``model_snapshot``: ``{"name": ..., "modelCount": N, "models": {name:
    {version: {"marName": ..., "defaultVersion": ..., "minWorkers": ...}}}}``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InvalidValue(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict) or not isinstance(value.get("models"), dict):
        raise InvalidValue('expected a JSON object with "models": {model: {version: {...}}}')
    count = value.get("modelCount")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
        raise InvalidValue(f"modelCount={count!r}: expected an integer")
    models: dict[str, dict[str, dict[str, Any]]] = {}
    for name, versions in value["models"].items():
        if not isinstance(versions, dict) or not versions:
            raise InvalidValue(f"model {name!r}: expected an object of versions")
        models[name] = {}
        for version, entry in versions.items():
            settings = _parse_model_settings(name, str(version), entry, _SNAPSHOT_KEYS,
                                             "model_snapshot")
            if not settings.get("marName"):
                raise InvalidValue(f"model {name!r} version {version!r}: marName is required")
            models[name][str(version)] = settings
    return {"name": str(value.get("name") or ""), "modelCount": count, "models": models}


def _parse_model_settings(name: str, version: str, settings: Any,
                          keys: dict[str, Callable[[Any], Any]] | None = None,
                          where_set: str = "models") -> dict[str, Any]:
    where = f"model {name!r} version {version!r}"
    if not isinstance(settings, dict):
        raise InvalidValue(f"{where}: expected an object of settings")
    parsed: dict[str, Any] = {}
    for key, raw in settings.items():
        parser = (keys or _MODEL_KEYS).get(key)
        if parser is None:
            logger.warning("config %s: %s: unknown setting %r ignored", where_set, where, key)
            continue
        try:
            parsed[key] = parser(raw)
        except ValueError as exc:
            raise InvalidValue(f"{where}: {key}={raw!r}: {exc}") from None
    low, high = parsed.get(_MIN_KEY), parsed.get(_MAX_KEY)
    if low is not None and high is not None and high < low:
        raise InvalidValue(f"{where}: maxWorkers cannot be less than minWorkers")
    return parsed
