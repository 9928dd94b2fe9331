"""torchd's command line: option parsing, the TorchServe-style mode flags, usage errors and help.
Logging setup is in test_cli_logging.py, serve/start/stop/status against real processes in
test_cli_processes.py."""
from __future__ import annotations

import pytest

from daemon.config.declarations import SETTINGS
from daemon.config.settings import load_config
from daemon.ops import cli
from daemon.ops.options import argv_options
from daemon.version import VERSION


# --- parsing ----------------------------------------------------------------------------------

def test_every_torchserve_option_parses():
    command, args, tokens = cli.parse_args([
        "serve", "--model-store", "/ms", "--models", "a=a.mar", "b=b.mar", "--ts-config",
        "c.properties", "--ncs", "--foreground", "--disable-token-auth", "--enable-model-api",
        "--log-config", "log.ini", "--pid-file", "t.pid"])
    assert command == "serve"
    assert args.model_store == "/ms"
    assert args.load_models == ["a=a.mar", "b=b.mar"]
    assert args.ts_config == "c.properties"
    assert args.ncs == "true"
    assert args.foreground
    assert args.disable_token_authorization == "true"
    assert args.enable_model_api == "true"
    assert args.log_config == "log.ini"
    assert args.pid_file == "t.pid"
    assert "--foreground" not in tokens and tokens[0] == "--model-store"


def test_torchserves_short_spellings_and_version(capsys):
    _, args, _ = cli.parse_args(["--start", "--dt", "--no-config-snapshots"])
    assert (args.disable_token_authorization, args.ncs) == ("true", "true")
    for spelling in ("--version", "-v"):    # TorchServe's both
        with pytest.raises(SystemExit) as exited:
            cli.parse_args([spelling])
        assert exited.value.code == 0
        assert capsys.readouterr().out == f"torchd {VERSION}\n"


def test_cli_values_reach_the_config(tmp_path):
    (tmp_path / "c.properties").write_text("model_store=from-file\nmax_workers=3\n")
    _, args, _ = cli.parse_args([
        "serve", "--ts-config", "c.properties", "--model-store", "ms", "--models", "a=a.mar",
        "b=b.mar", "--ncs", "--disable-token-auth", "--enable-model-api", "false",
        "--inference-address", "http://127.0.0.1:1", "--job-queue-size", "5",
        "--pid-file", "t.pid"])
    config = load_config(argv_options(args), {}, tmp_path)
    assert config.model_store == tmp_path / "ms"
    assert config.startup_models[1].name == "b"
    assert config.ncs and config.disable_token_authorization is True
    assert config.enable_model_api is False
    assert config.inference_address.port == 1
    assert config.job_queue_size == 5 and config.max_workers == 3
    assert config.pid_file == tmp_path / "t.pid"


def test_models_all_and_comma_lists(tmp_path):
    _, args, _ = cli.parse_args(["start", "--models", "all"])
    assert load_config(argv_options(args), {}, tmp_path).load_all_models
    _, args, _ = cli.parse_args(["start", "--models", "a=a.mar,b.mar"])
    assert load_config(argv_options(args), {}, tmp_path).load_models == ("a=a.mar",
                                                                             "b.mar")


@pytest.mark.parametrize("argv, command", [
    (["--start", "--model-store", "x"], "start"),
    (["--start", "--foreground"], "serve"),
    (["--foreground", "--ncs"], "serve"),
    (["start", "--foreground"], "serve"),
    (["--stop"], "stop"),
    (["stop"], "stop"),
    (["status"], "status"),
    (["serve"], "serve"),
    (["--ncs"], None),
])
def test_torchserve_style_flags_select_the_command(argv, command):
    assert cli.parse_args(argv)[0] == command


def test_start_hands_serve_the_same_options_without_mode_flags():
    _, _, tokens = cli.parse_args(["--start", "--ncs", "--models", "a=a.mar", "--foreground"])
    assert tokens == ["--ncs", "--models", "a=a.mar"]


def test_start_and_stop_together_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.parse_args(["--start", "--stop"])
    assert info.value.code == 2
    assert "exclude each other" in capsys.readouterr().err


def test_no_arguments_prints_help(capsys):
    assert cli.main([]) == 2
    assert "usage: torchd" in capsys.readouterr().err


def test_options_without_a_mode_ask_for_one(capsys):
    assert cli.main(["--ncs"]) == 2
    assert "serve, start, stop or status" in capsys.readouterr().err


def test_help_is_generated_from_the_settings_table(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for setting in SETTINGS:
        if setting.option:
            assert setting.option in out
    assert "--no-config-snapshots" in out
