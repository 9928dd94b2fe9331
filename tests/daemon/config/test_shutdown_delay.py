"""shutdown_delay is declared once and set like every setting: file, TS_SHUTDOWN_DELAY, CLI."""
from __future__ import annotations

import pytest

from daemon.config.settings import ConfigError, load_config
from daemon.ops.cli import _stop_wait, parse_args
from daemon.ops.options import argv_options


def config_from(tmp_path, argv=(), environ=None, properties=""):
    (tmp_path / "config.properties").write_text(properties)
    _, args, _ = parse_args(["serve", *argv])
    return load_config(argv_options(args), environ or {}, tmp_path)


def test_default_file_env_and_command_line(tmp_path) -> None:
    assert config_from(tmp_path).shutdown_delay == 0.0
    assert config_from(tmp_path, properties="shutdown_delay=7\n").shutdown_delay == 7.0
    env = {"TS_SHUTDOWN_DELAY": "2.5"}
    assert config_from(tmp_path, environ=env, properties="shutdown_delay=7\n"
                       ).shutdown_delay == 2.5
    assert config_from(tmp_path, ["--shutdown-delay", "4"], env).shutdown_delay == 4.0


def test_a_negative_delay_is_refused_naming_the_key(tmp_path) -> None:
    with pytest.raises(ConfigError, match="shutdown_delay.*must be >= 0"):
        config_from(tmp_path, ["--shutdown-delay=-1"])


def test_torchd_stop_waits_for_the_delay_too(tmp_path) -> None:
    plain = config_from(tmp_path)
    delayed = config_from(tmp_path, ["--shutdown-delay", "15"])
    assert _stop_wait(delayed) == _stop_wait(plain) + 15
