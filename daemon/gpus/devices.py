"""A model's devices: ``deviceType`` and ``deviceIds`` (TorchServe's model-config.yaml keys; also
the ``models`` JSON's, below the YAML), checked against the GPUs the daemon found.

``deviceType: cpu`` keeps the model's workers off the GPUs; ``deviceIds: [..]`` limits them to
those GPUs (CUDA ordinals, as ``context.system_properties["gpu_id"]`` numbers them). A deviceIds
entry that names no GPU in use is a 400 at register. On a machine with no GPU in use (none
found, or number_of_gpu=0) every model runs on the CPU and deviceIds is ignored with a warning,
so an archive written for a GPU machine still serves on a CPU one.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from daemon.config.model_settings import BY_FIELD, ModelSetting
from daemon.config.values import InvalidValue
from daemon.errors import BadRequest

logger = logging.getLogger(__name__)


def device_settings(name: str, yaml_config: dict[str, Any], json_settings: dict[str, Any],
                    gpu_ids: Sequence[int]) -> tuple[str | None, tuple[int, ...]]:
    """(deviceType or None, deviceIds) for model ``name``; BadRequest names a bad value."""
    device_type = _pick(yaml_config, json_settings, BY_FIELD["device_type"])
    device_ids = _pick(yaml_config, json_settings, BY_FIELD["device_ids"]) or ()
    if device_ids and not gpu_ids:
        logger.warning("model %s: deviceIds %s ignored: no GPU is in use, it runs on the CPU",
                       name, list(device_ids))
    elif device_ids and device_type != "cpu":
        for gpu in device_ids:
            if gpu not in gpu_ids:
                raise BadRequest(f"deviceIds entry {gpu} of model {name} names no GPU in use "
                                 f"(GPUs: {', '.join(map(str, gpu_ids))})")
    return device_type, device_ids


def _pick(yaml_config: dict[str, Any], json_settings: dict[str, Any],
          setting: ModelSetting) -> Any:
    key = setting.key
    for where, layer in (("model-config.yaml", yaml_config), ("models config", json_settings)):
        if layer.get(key) is not None:
            try:
                return setting.parse(layer[key])
            except InvalidValue as exc:
                raise BadRequest(f"Invalid {key} in {where}: {exc}") from None
    return None
