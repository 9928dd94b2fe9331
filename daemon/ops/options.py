"""The command line's options, every command's (each setting's, TorchServe's mode flags), and
the Config they make with config.properties and the environment."""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from daemon.config.declarations import SETTINGS
from daemon.config.settings import Config, ConfigError, load_config
from daemon.version import VERSION

START_WAIT = 60.0  # seconds `start` waits for the management listener
# Extra spellings TorchServe accepts for a setting.
_ALIASES = {"ncs": ["--no-config-snapshots"], "disable_token_authorization": ["--dt"]}
# TorchServe options torchd accepts and ignores (one value each).
IGNORED_OPTIONS = ("--plugins-path", "--cpp-log-config")


def build_parser(modes: bool = True,
                 aliases: Mapping[str, Sequence[str]] | None = None) -> argparse.ArgumentParser:
    """Every command's options; ``modes``: TorchServe's --start/--stop/--foreground too;
    ``aliases``: one command's extra spellings of settings (setting name: options)."""
    parser = argparse.ArgumentParser(
        prog="torchd", description="A TorchServe-compatible model server.",
        usage="torchd {serve,start,stop,status} [options]\n"
              "       torchd --start [--foreground] [options] | --stop\n"
              "       torchd llm --model-dir DIR [options]",
        epilog="Commands: serve (foreground), start (background), stop, status, llm (serve a "
               "Hugging Face model directory with OpenAI's API: torchd llm --help). "
               "TorchServe's --start/--stop/--foreground also work. Settings also come from "
               "config.properties and TS_<KEY> environment variables.")
    if modes:
        _add_mode_options(parser.add_argument_group("mode (TorchServe style, instead of a "
                                                    "command)"))
    general = parser.add_argument_group("general")
    general.add_argument("-v", "--version", action="version", version=f"torchd {VERSION}")
    general.add_argument("--ts-config", metavar="FILE",
                         help="config.properties to read (else $TS_CONFIG_FILE, else "
                              "./config.properties if present)")
    general.add_argument("--log-level", default="INFO",
                         choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                         help="level for the default stderr logging (default INFO)")
    general.add_argument("--wait", type=float, metavar="SECONDS",
                         help=f"start: how long to wait for the listener (default "
                              f"{START_WAIT:g}, longer with startup models); stop: how long "
                              "to wait for exit (default: the whole drain + 30)")
    for option in IGNORED_OPTIONS:
        general.add_argument(option, metavar="VALUE", help=argparse.SUPPRESS)
    # start's hand-over to the serve it runs: its own output, for the log's copy (cli.py)
    general.add_argument("--log-copy-fd", type=int, help=argparse.SUPPRESS)
    # ... and that it was started by start, which `stop` elsewhere may look for (pidfile.py)
    general.add_argument("--started", action="store_true", help=argparse.SUPPRESS)
    _add_setting_options(parser.add_argument_group("settings (override config.properties)"),
                         aliases or {})
    return parser


def _add_mode_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--start", action="store_true", help="start in the background")
    group.add_argument("--stop", action="store_true", help="stop the running daemon")
    group.add_argument("--foreground", action="store_true", help="with --start: stay in the "
                       "foreground, as `serve`, writing TorchServe's log files (ts_log.log, "
                       "model_log.log, access_log.log in log_location) beside stderr")


def _add_setting_options(group: argparse._ArgumentGroup,
                         aliases: Mapping[str, Sequence[str]]) -> None:
    for setting in SETTINGS:
        if setting.option is None:
            continue
        names = [setting.option, *_ALIASES.get(setting.name, []), *aliases.get(setting.name, [])]
        kwargs: dict[str, Any] = {"dest": setting.name, "default": None, "help": setting.help}
        if setting.flag:
            kwargs.update(nargs="?", const="true", metavar="true|false")
        elif setting.multi:
            kwargs.update(nargs="+", metavar="MODEL")
        else:
            kwargs.update(metavar=setting.name.upper())
        group.add_argument(*names, **kwargs)


def argv_options(args: argparse.Namespace) -> dict[str, Any]:
    """The command-line values as load_config takes them (None: not given)."""
    options: dict[str, Any] = {"ts_config": args.ts_config}
    for setting in SETTINGS:
        if setting.option is not None:
            options[setting.name] = getattr(args, setting.name)
    return options


def config_from_args(args: argparse.Namespace) -> Config | None:
    try:
        return load_config(argv_options(args), os.environ, Path.cwd())
    except ConfigError as exc:
        print(f"torchd: configuration error: {exc}", file=sys.stderr)
        return None
