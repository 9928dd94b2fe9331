"""The daemon's default log output: plain lines on stderr, cheap enough for a line per request.

The access log writes a line for every request, so the stock handler's costs show up in the
request rate: a strftime per record and a write system call per line. Here the timestamp text is
made once a second, and access log lines are written in batches: within FLUSH_INTERVAL seconds,
or with the next line of any other logger, which is written at once (at exit, logging's own
shutdown flushes the rest). A traceback printed
to sys.stderr directly can thus come out before log lines of the 0.1 s before it.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TextIO

FLUSH_INTERVAL = 0.1


def batched_stderr() -> TextIO:
    """Standard error without line buffering (sys.stderr writes every line as it comes), for
    BatchingStreamHandler; sys.stderr itself where it has no file descriptor."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return sys.stderr
    return open(fd, "w", buffering=64 * 1024, encoding=sys.stderr.encoding or "utf-8",
                errors="backslashreplace", closefd=False)


class SecondsFormatter(logging.Formatter):
    """A Formatter whose date text is computed once per second (the format has no msecs)."""

    def __init__(self, fmt: str, datefmt: str) -> None:
        super().__init__(fmt, datefmt)
        self._second = -1
        self._text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._text = time.strftime(datefmt or self.datefmt or "%Y-%m-%dT%H:%M:%S",
                                       self.converter(second))
            self._second = second
        return self._text


class BatchingStreamHandler(logging.StreamHandler):
    """A StreamHandler that leaves the records of the ``batched`` loggers in the stream's buffer
    for a timer to flush, and flushes after any other record."""

    def __init__(self, stream: TextIO, batched: tuple[str, ...] = ("torchd.access",),
                 interval: float = FLUSH_INTERVAL) -> None:
        super().__init__(stream)
        self._batched = frozenset(batched)
        self._dirty = False
        self._interval = interval
        self._timer_started = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)
            return
        if record.name not in self._batched:
            self.flush()
        else:
            self._dirty = True
            if not self._timer_started:
                self._start_timer()

    def flush(self) -> None:
        self._dirty = False
        super().flush()

    def _start_timer(self) -> None:
        # Started on first use, not in __init__: a process that forks after configuring
        # logging would not carry the thread over.
        self._timer_started = True
        threading.Thread(target=self._flush_now_and_then, name="log-flush", daemon=True).start()

    def _flush_now_and_then(self) -> None:
        while True:
            time.sleep(self._interval)
            if self._dirty:
                self.flush()
