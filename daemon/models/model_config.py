"""Which model-config.yaml keys torchd leaves unimplemented.

TorchServe's frontend acts on a fixed set of model-config.yaml keys; torchd implements most of
them (and a few of its own, see daemon/control/manager.py). The rest are named here: a model
that sets one (``sequenceBatching``, say) would otherwise run differently from how it was
written without anyone being told, so register warns once naming them all and describe lists
them. Keys TorchServe's frontend does not know either (a ``handler:`` section, anything a
handler reads for itself) are the handler's business: they reach it in
``context.model_yaml_config`` like every key, and are not named.
"""
from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

# TorchServe 0.12's frontend keys (ModelConfig) with no effect in torchd (sequenceMaxIdleMSec
# has one: it ends an idle gRPC sequence, daemon/rpc/sequences.py).
UNIMPLEMENTED_KEYS = (
    "parallelType", "parallelLevel", "torchrun", "maxRetryTimeoutInSec", "clientTimeoutInMills",
    "useJobTicket", "sequenceTimeoutMSec", "maxSequenceJobQueueSize",
    "maxNumSequence", "continuousBatching", "sequenceBatching", "asyncCommunication", "useVenv",
)


def ignored_config_keys(yaml_config: dict[str, Any]) -> list[str]:
    """The keys of ``yaml_config`` torchd does not implement, in the file's order."""
    return [key for key in yaml_config if key in UNIMPLEMENTED_KEYS]


def warn_ignored_keys(name: str, version: str, yaml_config: dict[str, Any]) -> None:
    """The one warning at register naming every key ``ignored_config_keys`` finds."""
    ignored = ignored_config_keys(yaml_config)
    if ignored:
        logger.warning("model %s %s: torchd does not implement these model-config.yaml keys, "
                       "which are ignored: %s", name, version, ", ".join(ignored))
