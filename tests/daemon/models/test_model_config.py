"""Which model-config.yaml keys torchd refuses at register and which it ignores with a warning
(daemon/models/model_config.py), read as TorchServe 0.12's ModelConfig reads them."""
from __future__ import annotations

import pytest

from daemon.config.model_settings import ModelSettings
from daemon.models.model_config import (ConfigRefused, check_config, ignored_config_keys,
                                        refusals)

PLAIN = ModelSettings()


@pytest.mark.parametrize("yaml", [
    {"parallelType": "tp", "parallelLevel": 2},
    {"parallelType": "PP", "parallelLevel": 1},            # one rank, still under torchrun
    {"parallelType": "pptp", "torchrun": {"nproc-per-node": 4}},
    {"parallelType": "tp", "torchrun": {}},                 # torchrun's level is 1 unless said
    {"parallelType": "tp", "torchrun": {"nproc-per-node": 0}},   # TorchServe: reset to 1
    {"parallelType": "custom", "parallelLevel": 2},         # one process, two GPUs
    {"parallelLevel": 2, "parallelType": "tp"},             # in either order
])
def test_model_parallelism_is_refused_naming_its_keys(yaml):
    (reason,) = refusals(yaml, PLAIN)
    source = "torchrun nproc-per-node" if "torchrun" in yaml else "parallelLevel"
    assert reason.startswith(f"parallelType {yaml['parallelType'].lower()} with {source} ")


@pytest.mark.parametrize("yaml", [
    {"parallelLevel": 4},                                   # no ParallelType: TorchServe too
    {"torchrun": {"nproc-per-node": 4}},                    # runs one plain process
    {"parallelType": "tp"},                                 # level 0
    {"parallelType": "tp", "parallelLevel": 0},
    {"parallelType": "tp", "parallelLevel": "2"},           # not an Integer: ignored
    {"parallelType": "tp", "parallelLevel": True},
    {"parallelType": "tp", "parallelLevel": 2**40},         # beyond an Integer
    {"parallelType": "sideways", "parallelLevel": 2},       # unknown type: NONE
    {"parallelType": ["tp"], "parallelLevel": 2},           # not a String: NONE
    {"parallelType": "custom", "parallelLevel": 1},         # one process on one GPU
    {"useVenv": True},
])
def test_parallel_keys_that_change_nothing_are_ignored_not_refused(yaml):
    assert refusals(yaml, PLAIN) == []
    assert ignored_config_keys(yaml) == list(yaml)


def test_the_level_comes_from_the_last_of_parallel_level_and_torchrun():
    assert refusals({"parallelType": "custom", "torchrun": {"nproc-per-node": 2},
                     "parallelLevel": 1}, PLAIN) == []
    assert refusals({"parallelType": "custom", "parallelLevel": 1,
                     "torchrun": {"nproc-per-node": 2}}, PLAIN) != []


def test_serving_modes_that_cannot_answer_are_refused():
    no_idle = ModelSettings(sequence_batching=True)
    (reason,) = refusals({}, no_idle)
    assert "sequenceBatching" in reason and "sequenceMaxIdleMSec" in reason
    assert refusals({}, ModelSettings(sequence_batching=True, sequence_max_idle_ms=1)) == []
    both = ModelSettings(continuous_batching=True, async_communication=True)
    assert refusals({}, both) == ["continuousBatching and asyncCommunication cannot both be "
                                  "true"]
    assert refusals({}, ModelSettings(continuous_batching=True)) == []
    assert refusals({}, ModelSettings(async_communication=True)) == []


def test_implemented_keys_are_neither_refused_nor_ignored():
    yaml = {"sequenceBatching": True, "sequenceMaxIdleMSec": 10, "sequenceTimeoutMSec": 5,
            "maxSequenceJobQueueSize": 2, "maxNumSequence": 4, "continuousBatching": True,
            "asyncCommunication": False, "useJobTicket": True, "clientTimeoutInMills": 300,
            "maxRetryTimeoutInSec": 0, "jobQueueSize": 2, "handler": {"x": 1}}
    assert ignored_config_keys(yaml) == []
    assert refusals(yaml, ModelSettings(sequence_batching=True, sequence_max_idle_ms=10)) == []


def test_check_config_is_one_400_naming_every_reason():
    settings = ModelSettings(continuous_batching=True, async_communication=True)
    with pytest.raises(ConfigRefused) as refused:
        check_config("m", "1.0", {"parallelType": "tp", "parallelLevel": 2}, settings)
    assert refused.value.status == 400 and refused.value.type == "BadRequestException"
    message = refused.value.message
    assert message.startswith('Model "m" version 1.0 cannot be served as configured: '
                              'parallelType tp with parallelLevel 2 (')
    assert message.endswith("; continuousBatching and asyncCommunication cannot both be true")
    check_config("m", "1.0", {"useVenv": True}, PLAIN)     # nothing to refuse
