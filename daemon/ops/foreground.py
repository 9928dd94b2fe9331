"""Serving in this process, what ``serve`` and ``llm`` share: logging set up, the pid file
written and removed, the daemon run until it stops."""
from __future__ import annotations

import json
import logging
import logging.config
import os
import sys
from pathlib import Path
from typing import Any

from daemon.config.settings import Config, ConfigError
from daemon.logfiles import LOGGER_FILES, START_LOG, RotatingLines, stderr_is
from daemon.logformat import (DIRECT_LINES, BatchingStreamHandler, SecondsFormatter,
                              batched_stderr)
from daemon.ops import pidfile

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_DATEFMT = "%Y-%m-%dT%H:%M:%S"


def serve(config: Config, log_level: str, started: bool = False,
          log_files: bool = False) -> int:
    """Run the daemon in this process until it stops (``serve``, and ``llm`` after it has
    written its model directory); the exit code. ``started``: by ``torchd start``, which
    lists it where ``torchd stop`` looks when the pid file's own place has none.
    ``log_files``: TorchServe's log files beside stderr (its ``--foreground``)."""
    if config.log_config is not None:
        try:
            configure_logging(config.log_config, log_level)
        except ConfigError as exc:
            print(f"torchd: configuration error: {exc}", file=sys.stderr)
            return 2
    other = pidfile.running_pid(config.pid_file)
    if other is not None and other != os.getpid():
        print(f"torchd: already running (pid {other}, pid file {config.pid_file})",
              file=sys.stderr)
        return 1
    if config.log_config is None:
        write_logger_files(config, every_line=log_files)
    try:
        pidfile.write_pid(config.pid_file)
    except OSError as exc:   # in log_location unless pid_file says where
        print(f"torchd: cannot start: cannot write the pid file {config.pid_file} (pid_file, "
              f"log_location): {exc}", file=sys.stderr)
        return 1
    registry = pidfile.started_registry()
    if started:
        pidfile.record_started(config.pid_file, registry)
    try:
        from daemon.ops.server import run  # imported late: the CLI's other commands don't need it
        return run(config)
    finally:
        if started:
            pidfile.forget_started(registry)
        pidfile.remove_pid(config.pid_file)


def write_logger_files(config: Config, every_line: bool = False) -> None:
    """TorchServe's log files in log_location, as its users read them: model_log.log and
    access_log.log, the lines of the handlers' output and of the access log again, each in a
    file of its own (logfiles.LOGGER_FILES), where stderr is ts_log.log (``torchd start``);
    and with ``every_line`` (TorchServe's ``--foreground``, whose log4j2 configuration writes
    its files wherever its console goes) ts_log.log too, every line, beside stderr.
    ``serve``'s output alone (journald, a container's log) has every line already; a
    --log-config says itself where lines go."""
    handler = next((h for h in logging.root.handlers if isinstance(h, BatchingStreamHandler)),
                   None)   # configure_logging's
    started_log = stderr_is(config.log_location / START_LOG)
    if handler is None or not (started_log or every_line):
        return
    if not started_log and (lines := _log_file(config, START_LOG)) is not None:
        handler.every_line_to(lines)
    for logger_name, file_name in LOGGER_FILES.items():
        if (lines := _log_file(config, file_name)) is not None:
            handler.also_to(logger_name, lines)


def _log_file(config: Config, file_name: str) -> RotatingLines | None:
    path = config.log_location / file_name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return RotatingLines(path, config.log_file_max_size, buffered=True)
    except OSError as exc:
        logger.warning("not writing %s (its lines are in torchd's own log only): %s", path, exc)
        return None


def configure_logging(log_config: Path | None, level: str = "INFO") -> None:
    """Plain lines to stderr (journald adds its own metadata), or the given config file:
    .ini/.conf/.cfg via fileConfig, .json/.yaml/.yml via dictConfig."""
    DIRECT_LINES.handler = None
    if log_config is None:
        handler = BatchingStreamHandler(batched_stderr())
        handler.setFormatter(SecondsFormatter(LOG_FORMAT, LOG_DATEFMT))
        logging.basicConfig(level=level, handlers=[handler], force=True)
        DIRECT_LINES.use(handler)
        # This format shows no thread or process, so records need not look them up (logging's
        # own knobs for that; each access log line paid for the lookups). A config file's
        # formats may show them: there they stay on.
        logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
        return
    suffix = log_config.suffix.lower()
    if suffix == ".xml":
        logger.warning("--log-config %s: log4j2 XML is TorchServe's format; torchd uses Python "
                       "logging (.ini, .json, .yaml), keeping the default", log_config)
        return
    try:
        if suffix in (".json", ".yaml", ".yml"):
            logging.config.dictConfig(_read_dict_config(log_config))
        else:
            logging.config.fileConfig(log_config, disable_existing_loggers=False)
    except Exception as exc:  # noqa: BLE001 - any failure here is a bad config file
        raise ConfigError(f"invalid value for log_config: {str(log_config)!r}: {exc}") from None


def _read_dict_config(path: Path) -> dict[str, Any]:
    import yaml

    text = path.read_text()
    data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise TypeError("expected a mapping (logging dictConfig schema)")
    # Module loggers already exist; dictConfig's default would silence them.
    data.setdefault("disable_existing_loggers", False)
    data.setdefault("version", 1)
    return data
