"""The daemon's default log output: plain lines on stderr, cheap enough for a line per request.

The access log writes a line for every request, and the workers' output may (a handler that
logs each request), so the stock handler's costs show up in the request rate: a strftime per
record and a write system call per line. Here the timestamp text is made once a second, and
the lines of those two loggers are written in batches: within FLUSH_INTERVAL seconds, or with
the next line of any other logger, which is written at once (at exit, logging's own shutdown
flushes the rest). A traceback printed
to sys.stderr directly can thus come out before log lines of the 0.1 s before it.
"""
from __future__ import annotations

import logging
import re
import sys
import threading
import time
from typing import TextIO

from daemon.logfiles import RotatingLines

FLUSH_INTERVAL = 0.1
# The loggers that can write a line per request: the access log, and the workers' output
# forwarded (a handler's print or log call per request is common in TorchServe handlers).
BATCHED_LOGGERS = ("torchd.access", "torchd.worker")


def batched_stderr() -> TextIO:
    """Standard error without line buffering (sys.stderr writes every line as it comes), for
    BatchingStreamHandler; sys.stderr itself where it has no file descriptor."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return sys.stderr
    return open(fd, "w", buffering=64 * 1024, encoding=sys.stderr.encoding or "utf-8",
                errors="backslashreplace", closefd=False)


# The record fields a line can be made of without a LogRecord (see DirectLines).
DIRECT_FIELDS = frozenset({"asctime", "levelname", "name", "message"})


class SecondsFormatter(logging.Formatter):
    """A Formatter whose date text is computed once per second (the format has no msecs)."""

    def __init__(self, fmt: str, datefmt: str) -> None:
        super().__init__(fmt, datefmt)
        self._second = -1
        self._text = ""
        self.direct = set(re.findall(r"%\((\w+)\)", fmt)) <= DIRECT_FIELDS

    def line(self, name: str, levelname: str, message: str) -> str:
        """What ``format`` makes of such a record, made without one (``direct`` formats)."""
        return self._style._fmt % {"asctime": self._seconds_text(int(time.time())),
                                   "levelname": levelname, "name": name, "message": message}

    def _seconds_text(self, second: int) -> str:
        if second != self._second:
            self._text = time.strftime(self.datefmt or "%Y-%m-%dT%H:%M:%S",
                                       self.converter(second))
            self._second = second
        return self._text

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self._seconds_text(int(record.created))


class BatchingStreamHandler(logging.StreamHandler):
    """A StreamHandler that leaves the records of the ``batched`` loggers in the stream's buffer
    for a timer to flush, and flushes after any other record. A batched logger's lines can go
    to a file of their own as well (``also_to``: TorchServe's model_log.log and access_log.log),
    and every line to one more file (``every_line_to``: ts_log.log beside a terminal's or a
    container's output), buffered and flushed with the stream.

    A write that fails (a full disk under ``torchd start``'s log) loses lines and raises
    nowhere: not in the code that logged (a request's answer, the supervisor), not in the
    flush thread. Once the stream takes lines again, a line says how many writes failed."""

    def __init__(self, stream: TextIO, batched: tuple[str, ...] = BATCHED_LOGGERS,
                 interval: float = FLUSH_INTERVAL) -> None:
        super().__init__(stream)
        self.batched = frozenset(batched)
        self._dirty = False
        self._interval = interval
        self._timer_started = False
        self._files: dict[str, RotatingLines] = {}
        self._every_line: RotatingLines | None = None
        self._failures = 0   # writes to the stream failed since it last took lines
        self._first_failure: OSError | None = None

    def also_to(self, logger_name: str, lines: RotatingLines) -> None:
        """``logger_name``'s lines (a batched logger's) written to ``lines`` too."""
        if logger_name not in self.batched:
            raise ValueError(f"{logger_name} is not a batched logger of this handler")
        with self._held():
            self._files = {**self._files, logger_name: lines}

    def every_line_to(self, lines: RotatingLines) -> None:
        """Every line written to ``lines`` too."""
        with self._held():
            self._every_line = lines

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._write(record.name, line)   # Handler.handle holds the lock
        if record.name not in self.batched:
            self.flush()
        else:
            self._written_batched()

    def write_batched(self, logger_name: str, text: str) -> None:
        """A finished line of a batched logger, written as ``emit`` writes one."""
        with self._held():   # the flush thread takes it too
            self._write(logger_name, text + self.terminator)
        self._written_batched()

    def _write(self, logger_name: str, line: str) -> None:
        try:
            self.stream.write(line)
        except OSError as exc:
            self._failed(exc)
        if (lines := self._files.get(logger_name)) is not None:
            lines.write(line)   # RotatingLines keeps its own failures
        if (every := self._every_line) is not None:
            every.write(line)

    def _written_batched(self) -> None:
        self._dirty = True
        if not self._timer_started:
            self._start_timer()

    def flush(self) -> None:
        self._dirty = False
        with self._held():
            try:
                self.stream.flush()
            except OSError as exc:
                self._failed(exc)
            else:
                if self._failures:
                    self._say_lines_were_lost()
            for lines in self._files.values():
                lines.flush()
            if self._every_line is not None:
                self._every_line.flush()

    def _failed(self, exc: OSError) -> None:
        if not self._failures:
            self._first_failure = exc
        self._failures += 1

    def _say_lines_were_lost(self) -> None:
        failures, self._failures = self._failures, 0
        record = logging.makeLogRecord({
            "name": __name__, "levelno": logging.WARNING, "levelname": "WARNING",
            "msg": "this log could not be written for a while (%d failed write(s), the "
                   "first: %s): lines were lost", "args": (failures, self._first_failure)})
        try:
            self.stream.write(self.format(record) + self.terminator)
            self.stream.flush()
        except OSError as exc:
            self._failed(exc)

    def _held(self) -> threading.RLock:
        lock = self.lock
        assert lock is not None   # Handler.__init__ made it
        return lock

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


class DirectLines:
    """INFO lines of a batched logger (the access log) written straight to torchd's default
    handler, without a LogRecord, a Formatter's steps and the logger's walk to its handlers:
    two thirds of a line's cost, and the access log writes one per request.

    Only while the line would go nowhere else: ``write`` says False (the caller then logs it
    the usual way) once the logger has handlers or filters of its own or the root logger has
    other handlers (a test capturing logs, say). A config file's logging never uses it."""

    def __init__(self) -> None:
        self.handler: BatchingStreamHandler | None = None

    def use(self, handler: BatchingStreamHandler) -> None:
        formatter = handler.formatter
        direct = isinstance(formatter, SecondsFormatter) and formatter.direct
        self.handler = handler if direct and not handler.filters else None

    def write(self, logger: logging.Logger, message: str) -> bool:
        handler = self.handler
        root_handlers = logging.root.handlers
        if (handler is None or logger.handlers or logger.filters or len(root_handlers) != 1
                or root_handlers[0] is not handler or handler.level > logging.INFO
                or logger.name not in handler.batched
                or not isinstance(formatter := handler.formatter, SecondsFormatter)):
            return False
        handler.write_batched(logger.name, formatter.line(logger.name, "INFO", message))
        return True


DIRECT_LINES = DirectLines()
