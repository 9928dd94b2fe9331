"""``torchd serve | start | stop | status | llm`` and TorchServe's ``--start``/``--stop`` flags.

``serve`` runs the daemon in the foreground (what systemd runs). ``start`` runs
``python -m daemon.ops.cli serve <same options>`` in a new session with output appended to
``<log_location>/ts_log.log``, TorchServe's name (the handlers' output and the access log are
also in model_log.log and access_log.log there: foreground.write_logger_files; the whole log
is copied to start's own output where that is PID 1's, a container's log, or a file:
logfiles.LogCopy), and returns once it listens on the management address (or has died). The
serving process writes and removes its own pid file; ``stop`` and ``status`` read it.
``llm`` (daemon/ops/llm.py) serves one language model directory, as ``serve`` would.

Without a subcommand, TorchServe's spelling works: ``torchd --start ...`` (``--foreground``
makes it ``serve``), ``torchd --stop``. The subcommand, when given, must come first.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from daemon.logfiles import START_LOG, LogCopy, is_log_copy_output
from daemon.metrics.metrics_log import log_paths
from daemon.ops import pidfile
from daemon.ops.foreground import configure_logging, serve
from daemon.ops.options import IGNORED_OPTIONS, START_WAIT, build_parser, config_from_args
from daemon.osutil import pid_gone
from daemon.config.settings import Config


COMMANDS = ("serve", "start", "stop", "status")
# Tokens that select the command; they are dropped when `start` re-runs itself as `serve`.
_MODE_FLAGS = ("--start", "--stop", "--foreground")


def parse_args(argv: Sequence[str]) -> tuple[str | None, argparse.Namespace, list[str]]:
    """(command, options, the option tokens) — the tokens are what `start` hands to `serve`."""
    argv = list(argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else None
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.start and args.stop:
        parser.error("--start and --stop exclude each other")
    if command is None:
        command = "stop" if args.stop else "start" if args.start else None
        if command is None and args.foreground:
            command = "serve"
    if command == "start" and args.foreground:
        command = "serve"
    return command, args, [token for token in argv if token not in _MODE_FLAGS]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        build_parser().print_help(sys.stderr)
        return 2
    if argv[0] == "llm":   # its own options beside serve's (daemon/ops/llm.py)
        from daemon.ops.llm import cmd_llm
        return cmd_llm(argv[1:])
    command, args, tokens = parse_args(argv)
    if command is None:
        print("torchd: say what to do: serve, start, stop or status (or --start/--stop)",
              file=sys.stderr)
        return 2
    for option in IGNORED_OPTIONS:
        if getattr(args, option.lstrip("-").replace("-", "_")) is not None:
            print(f"torchd: {option} is a TorchServe option that torchd ignores",
                  file=sys.stderr)
    handler = {"serve": cmd_serve, "start": cmd_start, "stop": cmd_stop,
               "status": cmd_status}[command]
    return handler(args, tokens)


# ---------------------------------------------------------------------------------------------
# serve


def cmd_serve(args: argparse.Namespace, tokens: list[str] | None = None) -> int:
    configure_logging(None, args.log_level)
    # before anything is logged: from here on every line of the log reaches the copy
    copy = None if args.log_copy_fd is None else LogCopy.of_this_process(args.log_copy_fd)
    if copy is not None:
        copy.start()
    try:
        config = config_from_args(args)
        if config is None:
            return 2
        if copy is not None and config.metrics_logged:
            for path in log_paths(config.metrics_location):
                copy.follow(path)
        return serve(config, args.log_level, started=args.started,
                     log_files=args.foreground)
    finally:
        if copy is not None:
            copy.close()


# ---------------------------------------------------------------------------------------------
# start


def cmd_start(args: argparse.Namespace, tokens: list[str]) -> int:
    config = config_from_args(args)
    if config is None:
        return 2
    running = pidfile.running_pid(config.pid_file)
    if running is not None:
        print(f"torchd is already running (pid {running}, pid file {config.pid_file}); "
              "stop it first with `torchd stop`", file=sys.stderr)
        return 1
    log_path = config.log_location / START_LOG   # set aside by the daemon past a size
    try:
        config.log_location.mkdir(parents=True, exist_ok=True)
        log_path.open("ab").close()
    except OSError as exc:   # a log_location that cannot be written: say so, no traceback
        print(f"torchd: cannot start: cannot write its log {log_path} (log_location): {exc}",
              file=sys.stderr)
        return 1
    process = _spawn_serve(tokens, log_path)
    return _wait_started(process, config, log_path, args.wait or _start_wait(config))


def _spawn_serve(tokens: list[str], log_path: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "daemon.ops.cli", "serve", *tokens, "--started"]
    copy_to = _log_copy_output(log_path)
    if copy_to is not None:
        command += ["--log-copy-fd", str(copy_to)]
    try:
        with open(log_path, "ab") as log:
            return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    close_fds=True, pass_fds=() if copy_to is None else (copy_to,))
    finally:
        if copy_to is not None:
            os.close(copy_to)


def _log_copy_output(log_path: Path) -> int | None:
    """A duplicate of this process's stdout for the daemon to copy its log to, where that is
    PID 1's (a container's log) or a file (logfiles.is_log_copy_output); else None."""
    try:
        sys.stdout.flush()   # what start printed before stays before the copy
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    return os.dup(fd) if is_log_copy_output(fd, log_path) else None


def _wait_started(process: subprocess.Popen, config: Config, log_path: Path,
                  wait: float) -> int:
    address = config.management_address
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            print(f"torchd failed to start (exit code {code}); see {log_path}:",
                  file=sys.stderr)
            print(_tail(log_path), file=sys.stderr)
            return 1
        if pidfile.read_pid(config.pid_file) == process.pid and is_listening(address):
            # TorchServe's words, which its scripts wait for in start's output
            print(f"Model server started: torchd pid {process.pid}, management API at "
                  f"{address.url}, log {log_path}", flush=True)
            process.returncode = 0  # detached on purpose: no "still running" warning
            return 0
        time.sleep(0.1)
    print(f"torchd (pid {process.pid}) is not listening on {address.url} after {wait:g} s; "
          f"it keeps starting in the background, see {log_path}", file=sys.stderr)
    process.returncode = 0
    return 1


def is_listening(address: Any, timeout: float = 0.5) -> bool:
    """Something accepts connections at the BindAddress (TCP or unix socket)."""
    try:
        if address.is_unix:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(str(address.path))
        else:
            socket.create_connection((address.connect_host, address.port), timeout).close()
    except OSError:
        return False
    return True


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------
# stop, status


def _pid_file_for(args: argparse.Namespace) -> tuple[Path | None, Config | None]:
    config = config_from_args(args)
    if config is not None:
        return _started_elsewhere(config) or config.pid_file, config
    if args.pid_file:  # a broken config must not keep an operator from stopping the daemon
        return Path(args.pid_file).resolve(), None
    return None, None


def _started_elsewhere(config: Config) -> Path | None:
    """Where the pid file's place was not chosen (by pid_file or log_location) and has no
    running daemon: the pid file of the one daemon `torchd start` started elsewhere (from
    another directory), as TorchServe's --stop finds its server from any directory. None
    where there is no such daemon, or several (they are named: the caller says which)."""
    chosen = {config.sources.get(key, "default") for key in ("pid_file", "log_location")}
    if chosen != {"default"} or pidfile.running_pid(config.pid_file) is not None:
        return None
    started = pidfile.started_daemons(pidfile.started_registry())
    if len(started) == 1:
        [(pid, path)] = started
        print(f"no torchd with a pid file at {config.pid_file}; the one torchd start started "
              f"is pid {pid}, pid file {path}")
        return path
    for pid, path in started:
        print(f"torchd start started pid {pid}, pid file {path}: name it with "
              f"--pid-file {path}", file=sys.stderr)
    return None


def cmd_stop(args: argparse.Namespace, tokens: list[str] | None = None) -> int:
    path, config = _pid_file_for(args)
    if path is None:
        return 2
    pid = pidfile.read_pid(path)
    if pid is None:
        print(f"torchd is not running (no pid file at {path})")
        return 0
    if not pidfile.is_torchd_process(pid):
        print(f"torchd is not running (stale pid file {path} named pid {pid}; removed)")
        pidfile.remove_pid(path, pid)
        return 0
    wait = args.wait if args.wait is not None else _stop_wait(config)
    print(f"stopping torchd (pid {pid}), waiting up to {wait:g} s")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    if not _wait_gone(pid, wait):
        print(f"torchd (pid {pid}) is still running after {wait:g} s", file=sys.stderr)
        return 1
    pidfile.remove_pid(path, pid)
    print("torchd stopped")
    return 0


def _start_wait(config: Config) -> float:
    """The daemon listens only once startup models are loaded: wait for their workers too."""
    if config.load_models:
        return max(START_WAIT, config.default_startup_timeout + 30.0)
    return START_WAIT


def _stop_wait(config: Config | None) -> float:
    """Long enough for the daemon's own shutdown: shutdown_delay, HTTP requests in flight
    (30 s), then workers finishing their batches (unregister_model_timeout), then a stop
    grace."""
    if config is None:
        return 180.0
    drain = max(config.default_response_timeout, config.unregister_model_timeout)
    return config.shutdown_delay + float(30 + drain + 30)


def _wait_gone(pid: int, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while not pid_gone(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def cmd_status(args: argparse.Namespace, tokens: list[str] | None = None) -> int:
    path, config = _pid_file_for(args)
    if path is None:
        return 2
    pid = pidfile.running_pid(path)
    if pid is None:
        stale = pidfile.read_pid(path)
        note = f" (stale pid file {path} names pid {stale})" if stale else ""
        print(f"torchd is not running{note}")
        return 1
    print(f"torchd is running (pid {pid}, pid file {path})")
    if config is not None and path == config.pid_file:   # not one found elsewhere
        for name, address in config.listeners.items():
            state = "listening" if is_listening(address) else "not listening"
            print(f"  {name}: {address.url} ({state})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
