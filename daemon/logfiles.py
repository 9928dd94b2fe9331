"""The log files torchd writes itself stay bounded, as TorchServe's log4j2 configuration keeps
its own: once past ``max_bytes`` a file is set aside as ``<name>.1`` (``.1`` becomes ``.2`` and
so on, the oldest of ``KEEP`` dropped) and a new one begun. These are ``torchd start``'s log
(the daemon's stderr) and the metrics log (``metrics_mode`` log); journald, or the handlers of
a ``--log-config``, bound the rest."""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

KEEP = 5     # files set aside, as TorchServe's DefaultRolloverStrategy max
START_LOG = "torchd.log"   # torchd start's log, in log_location
CHECK_SECONDS = 5.0        # how often the daemon looks at its stderr log's size


def set_aside(path: Path, keep: int = KEEP) -> None:
    """``path`` renamed to ``path.1``, each ``path.N`` to ``path.N+1``; ``path.KEEP`` dropped."""
    for number in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{number}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{number + 1}"))
    if path.exists():
        os.replace(path, path.with_name(f"{path.name}.1"))


class RotatingLines:
    """A file of text lines, each written whole (line-buffered), set aside once past
    ``max_bytes`` (0: never).

    Not logging's RotatingFileHandler, which names its files the same way: a record, its
    formatting and its seek-and-tell size check cost 17 us a line here against 1.9 us, and
    the metric log writes several lines per request."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._file = open(path, "a", buffering=1, encoding="utf-8")
        self._size = self._file.tell()

    def write(self, line: str) -> None:
        self._file.write(line)
        self._size += len(line)     # the lines are ASCII: characters are bytes
        if self.max_bytes and self._size >= self.max_bytes:
            self._file.close()
            set_aside(self.path)
            self._file = open(self.path, "a", buffering=1, encoding="utf-8")
            self._size = 0

    def close(self) -> None:
        self._file.close()


class StderrLog:
    """``torchd start``'s log: the file the daemon's stdout and stderr were opened on. Past
    ``max_bytes`` it is set aside and a new file put on both descriptors (every writer in the
    process, logging's handlers included, writes through them)."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes

    @classmethod
    def of_this_process(cls, path: Path, max_bytes: int) -> StderrLog | None:
        """One when stderr is the file at ``path`` (and a size is set), else None: a terminal,
        journald's pipe, or a file a user redirected it to are not torchd's to rotate."""
        if not max_bytes:
            return None
        try:
            ours, there = os.fstat(2), os.stat(path)
        except OSError:
            return None
        if not stat.S_ISREG(ours.st_mode) or (ours.st_dev, ours.st_ino) != (there.st_dev,
                                                                            there.st_ino):
            return None
        return cls(path, max_bytes)

    def check(self) -> bool:
        """Set the file aside if it has grown past the limit; whether it did."""
        if os.fstat(2).st_size < self.max_bytes:
            return False
        for handler in logging.getLogger().handlers:
            handler.flush()    # what is buffered belongs to the old file
        set_aside(self.path)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.dup2(fd, 1)
            os.dup2(fd, 2)
        finally:
            os.close(fd)
        return True
