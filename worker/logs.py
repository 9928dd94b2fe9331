"""Per-process logging setup, and a worker's stdout/stderr prefixed line by line.

The prefix is applied at the file-descriptor level (fds 1 and 2 become a pipe that a thread
drains), so handler print()s, warnings and output from C extensions or child processes are all
tagged with the worker id before they reach the inherited stderr. Logging, the one kind of
output a handler may write for every request, skips the pipe: its records go straight to the
inherited stderr with the prefix in their format (PrefixedOutput.direct_stream); so a print()
and a log record written just after it may come out in either order.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from typing import TextIO

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CLOSE_GRACE_SECONDS = 1.0

_configured_pid: int | None = None


def configure_logging(prefix: str = "", level: int = logging.INFO,
                      stream: TextIO | None = None) -> None:
    """Install one handler on the root logger, writing to ``stream`` (default stderr), once per
    process (a forked child redoes it, replacing what it inherited from the zygote)."""
    global _configured_pid
    if _configured_pid == os.getpid():
        return
    _configured_pid = os.getpid()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(prefix.replace("%", "%%") + LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    # torch warns on import when numpy is missing; numpy is not a dependency of torchd.
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")


class PrefixedOutput:
    """Redirect fds 1 and 2 into a pipe whose lines reach the original stderr prefixed."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix.encode("utf-8")
        self._target = -1
        self._reader = -1
        self._thread: threading.Thread | None = None
        self._closed = threading.Lock()

    def start(self) -> PrefixedOutput:
        _flush_std_streams()
        self._target = os.dup(2)
        self._reader, writer = os.pipe()
        os.dup2(writer, 1)
        os.dup2(writer, 2)
        os.close(writer)
        if hasattr(sys.stdout, "reconfigure"):
            sys.stdout.reconfigure(line_buffering=True)  # print() lines leave at once
        self._thread = threading.Thread(target=self._pump, name="output-prefix", daemon=True)
        self._thread.start()
        return self

    def direct_stream(self) -> TextIO:
        """The original stderr, for this process's logging with the prefix in its format: a
        record is one write there, where through fds 1 and 2 it would wake the pump thread and
        take two more system calls (a handler that logs each request pays that per request)."""
        return open(os.dup(self._target), "w", buffering=1, encoding="utf-8",
                    errors="backslashreplace")

    def _pump(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self._reader, 65536)
            except InterruptedError:
                continue
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            if lines:
                self._write(b"".join(self._prefix + line + b"\n" for line in lines))
        if pending:
            self._write(self._prefix + pending + b"\n")
        os.close(self._reader)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._target, view)
            except InterruptedError:
                continue
            except OSError:
                return  # stderr is gone; nothing sensible left to do with the output
            view = view[written:]

    def close(self) -> None:
        """Flush, point fds 1 and 2 back at the real stderr, and let the pump drain the pipe."""
        if self._thread is None or not self._closed.acquire(blocking=False):
            return
        _flush_std_streams()
        os.dup2(self._target, 1)
        os.dup2(self._target, 2)
        self._thread.join(CLOSE_GRACE_SECONDS)


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
