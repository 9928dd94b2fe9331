"""The Supervisor's settings come from the config alone, and a registered version's settings
change only through ``Supervisor.update_settings``."""
from __future__ import annotations

import dataclasses

import pytest

from daemon.config.declarations import SETTINGS_BY_NAME
from daemon.config.model_settings import ModelSettings
from daemon.workers.runner import RunnerSettings
from daemon.workers.supervisor import SupervisorSettings
from tests.daemon.workers.supervisor_harness import Harness, ready, scenario


def test_the_supervisor_has_no_default_of_its_own_for_a_config_key() -> None:
    """autoscale_up_delay once defaulted to 1.0 here and to 2.0 in the config."""
    declared = [f for f in dataclasses.fields(SupervisorSettings) if f.name in SETTINGS_BY_NAME]
    assert {f.name for f in declared} >= {"heartbeat_interval", "autoscale_up_delay",
                                          "autoscale_down_delay"}
    for f in declared:
        assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


@scenario
async def test_update_settings_replaces_the_frozen_settings_and_reconciles(h: Harness) -> None:
    mv = h.model(batch_size=4)
    before = mv.settings
    h.sup.update_settings(mv, min_workers=2, max_workers=3)
    assert before == ModelSettings(batch_size=4)                  # the old copy is untouched
    assert mv.settings == dataclasses.replace(before, min_workers=2, max_workers=3)
    await ready(h, mv, 2)                                         # and the workers follow
    with pytest.raises(TypeError):
        h.sup.update_settings(mv, no_such_setting=1)
    assert mv.settings.min_workers == 2


def test_runner_settings_need_no_config_default() -> None:
    """RunnerSettings' fields are named apart from the config keys they come from, except the
    service envelope, which is unset in both."""
    for f in dataclasses.fields(RunnerSettings):
        if f.name in SETTINGS_BY_NAME:
            assert f.default == SETTINGS_BY_NAME[f.name].default
