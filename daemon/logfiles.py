"""The log files torchd writes itself, with TorchServe's names, bounded as TorchServe's log4j2
configuration keeps its own: once past ``max_bytes`` a file is set aside as ``<name>.1``
(``.1`` becomes ``.2`` and so on, the oldest of ``KEEP`` dropped) and a new one begun. These are
``torchd start``'s log (the daemon's stderr, every line: ``ts_log.log``), the lines of two of
its loggers again in files of their own (``model_log.log``, ``access_log.log``: LOGGER_FILES),
and the metric logs (``metrics_mode`` log); journald, or the handlers of a ``--log-config``,
bound the rest. ``torchd start``'s log is also copied, as it grows, to its output where that is
PID 1's (a container's log) or a file (LogCopy)."""
from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

KEEP = 5     # files set aside, as TorchServe's DefaultRolloverStrategy max
START_LOG = "ts_log.log"   # torchd start's log, in log_location: every line, as TorchServe's
# The loggers whose lines torchd start also writes to a file of their own in log_location, as
# TorchServe's log4j2 configuration does: the handlers' output (what its users are told to read
# when a model fails) and the access log.
LOGGER_FILES = {"torchd.worker": "model_log.log", "torchd.access": "access_log.log"}
CHECK_SECONDS = 5.0        # how often the daemon looks at its stderr log's size
COPY_SECONDS = 0.1         # how often LogCopy looks for new lines when it has copied all
COPY_CHUNK = 64 * 1024
INIT_OUTPUT = "/proc/1/fd/1"   # PID 1's standard output

logger = logging.getLogger(__name__)


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
    the metric log writes several lines per request.

    ``buffered``: lines wait in the file's buffer for ``flush`` (a write system call for many
    lines, as the log handler that writes them batches its own).

    A write that fails (a full disk) never reaches the writer, which may be answering a
    request: the line is lost, and the log says so once when the failures begin and once
    when the file takes lines again, as TorchServe's log4j2 appenders keep serving."""

    def __init__(self, path: Path, max_bytes: int, buffered: bool = False) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._buffering = 64 * 1024 if buffered else 1
        self._file: TextIO | None = self._open()
        self._size = self._file.tell()
        self._failures = 0   # writes failed since the file last took a line

    def _open(self) -> TextIO:
        return open(self.path, "a", buffering=self._buffering, encoding="utf-8",
                    errors="backslashreplace")

    def write(self, line: str) -> None:
        try:
            if self._file is None:   # a set-aside failed half-way
                self._file = self._open()
            self._file.write(line)
            # characters, not bytes: a line of other than ASCII counts short, which only lets
            # a file grow a little past the limit
            self._size += len(line)
            if self.max_bytes and self._size >= self.max_bytes:
                self._begin_anew()
        except OSError as exc:
            self._failed(exc)
            return
        if self._buffering == 1:   # written through (a buffered line: once flushed)
            self._written()

    def _begin_anew(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()   # closed even where its last flush fails
        set_aside(self.path)
        self._size = 0
        self._file = self._open()

    def flush(self) -> None:
        if self._file is None:
            return
        try:
            self._file.flush()
        except OSError as exc:
            self._failed(exc)
            return
        self._written()

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()

    def _failed(self, exc: OSError) -> None:
        self._failures += 1
        if self._failures == 1:
            logger.warning("cannot write %s (%s): its lines are lost until it can be written "
                           "again", self.path, exc)

    def _written(self) -> None:
        if self._failures:
            # counted down before logging: the warning may be written through this file's
            # own log handler (model_log.log, access_log.log), which flushes it
            failures, self._failures = self._failures, 0
            logger.warning("%s is written again, after %d failed write(s)", self.path,
                           failures)


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
        if not max_bytes or not stderr_is(path):
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


def stderr_is(path: Path) -> bool:
    """Whether this process's stderr is the file at ``path`` (``torchd start``'s log)."""
    try:
        ours, there = os.fstat(2), os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(ours.st_mode) and os.path.samestat(ours, there)


def is_init_output(fd: int, init_output: str = INIT_OUTPUT) -> bool:
    """Whether ``fd`` is the output of this process tree's first process (PID 1). In a
    container that output is the container's log (``docker logs``, ``kubectl logs``), and under
    TorchServe's image it is where the log went: its entrypoint, PID 1, runs ``torchserve
    --start`` and ``tail -f /dev/null``, and the JVM writes to the output it inherits.
    /dev/null, or a PID 1 this process may not look at, is not it."""
    try:
        ours, init, null = os.fstat(fd), os.stat(init_output), os.stat(os.devnull)
    except OSError:
        return False
    return os.path.samestat(ours, init) and not os.path.samestat(ours, null)


def is_log_copy_output(fd: int, log_path: Path, init_output: str = INIT_OUTPUT) -> bool:
    """Whether ``torchd start`` copies its log (LogCopy) to ``fd``, its output, as TorchServe's
    JVM writes its log to the output it inherits: where that is PID 1's (is_init_output), or a
    file (``torchserve --start > ts.log``, as TorchServe's benchmark and many scripts run it,
    then wait for "Model server started" in it), never the log itself. Any other output is
    left alone once start returns: a terminal has its prompt back, and a script reading
    start's output to its end (``$(...)``, a subprocess's captured output) would otherwise
    wait until the server stops, as it does with TorchServe."""
    if is_init_output(fd, init_output):
        return True
    try:
        ours = os.fstat(fd)
    except OSError:
        return False
    if not stat.S_ISREG(ours.st_mode):
        return False
    try:
        return not os.path.samestat(ours, os.stat(log_path))
    except FileNotFoundError:
        return True
    except OSError:
        return False


class FollowedFile:
    """A file read as it grows, as ``tail -F`` does: past the end of one that has been set
    aside (renamed, a new one begun at ``path``), the rest of it, then the new one from its
    start. Only whole lines are handed on, so that what others write to the same output falls
    between lines; a longer line goes in pieces."""

    def __init__(self, path: str) -> None:
        """From the end the file has now; from its start if it is yet to be made."""
        self.path = path
        self._partial = b""           # the start of a line whose end is not read yet
        self._reading: int | None = None
        with contextlib.suppress(FileNotFoundError):
            self._reading = self._open(at_end=True)

    def _open(self, at_end: bool) -> int:
        # A description of our own, so reading moves no offset the writers use.
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        if at_end:
            os.lseek(fd, 0, os.SEEK_END)
        return fd

    def copy(self, write: Callable[[bytes], None]) -> int:
        """What is new, whole lines, to ``write``: the bytes read (COPY_CHUNK, a full chunk,
        when there may be more at once), 0 where nothing was new."""
        return self._copy_new_lines(write) or (COPY_CHUNK if self._follow_set_aside(write)
                                                else 0)

    def finish(self, write: Callable[[bytes], None]) -> None:
        """The last line, ended or not."""
        write(self._partial)
        self._partial = b""

    def close(self) -> None:
        if self._reading is not None:
            os.close(self._reading)
            self._reading = None

    def _copy_new_lines(self, write: Callable[[bytes], None]) -> int:
        if self._reading is None:
            return 0
        chunk = os.read(self._reading, COPY_CHUNK)
        if not chunk:
            return 0
        data = self._partial + chunk
        end = data.rfind(b"\n") + 1
        if end == 0 and len(data) > COPY_CHUNK:
            end = len(data)     # a line longer than a chunk: in pieces
        write(data[:end])
        self._partial = data[end:]
        return len(chunk)

    def _follow_set_aside(self, write: Callable[[bytes], None]) -> bool:
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False
        if self._reading is not None:
            if os.path.samestat(now, os.fstat(self._reading)):
                return False
            while self._copy_new_lines(write):
                pass
            self.finish(write)
            self.close()
        self._reading = self._open(at_end=False)
        return True


class LogCopy:
    """The daemon's stderr log (``torchd start``'s ts_log.log) copied, as it grows, to ``out``,
    the output start was given where that is PID 1's or a file (is_log_copy_output), as
    TorchServe's JVM writes its log to the output it inherits; and the metric logs where
    there are any (``follow``), as TorchServe's metric loggers write to that output too.

    A thread of its own follows the files (each a new one once it has been set aside) and
    writes with blocking writes: a reader that stops reading holds up the copy, never the
    daemon, and the files keep every line. A write that fails (the reader is gone) ends it."""

    def __init__(self, out: int, source: int = 2, interval: float = COPY_SECONDS) -> None:
        """``source``: the descriptor the log is written through (stderr)."""
        self.out = out
        self.interval = interval
        os.set_inheritable(out, False)   # the container's log is for this process alone
        self._files = [FollowedFile(f"/proc/self/fd/{source}")]
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-copy", daemon=True)

    @classmethod
    def of_this_process(cls, out: int) -> LogCopy | None:
        """One copying stderr to ``out``, where stderr is a file (opening a pipe's other end
        through /proc would take lines from its reader); else ``out`` is closed and None."""
        try:
            if stat.S_ISREG(os.fstat(2).st_mode):
                return cls(out)
        except OSError:
            pass
        logger.warning("not copying the log to descriptor %d: stderr is no file to copy", out)
        with contextlib.suppress(OSError):
            os.close(out)
        return None

    def follow(self, path: Path) -> None:
        """``path``'s lines copied too, from its end now (from its start once it is made)."""
        self._files = [*self._files, FollowedFile(str(path))]   # the thread takes a whole list

    def start(self) -> LogCopy:
        self._thread.start()
        return self

    def close(self, wait: float = 2.0) -> None:
        """Copy what the files have now (waiting at most ``wait`` seconds on a slow reader),
        then stop."""
        for handler in logging.getLogger().handlers:
            handler.flush()
        self._closing.set()
        self._thread.join(wait)

    def _run(self) -> None:
        try:
            while True:
                closing = self._closing.is_set()   # read first: then nothing copied means done
                files = self._files
                # every file each round, a chunk at most from each: none holds up the others
                copied = [followed.copy(self._write) for followed in files]
                if max(copied) >= COPY_CHUNK or (closing and any(copied)):
                    continue
                if closing:
                    for followed in files:
                        followed.finish(self._write)
                    return
                # a pause after less than a chunk: a busy daemon's lines go out in a few
                # large writes a round, not a syscall (and a turn at the GIL) for each
                self._closing.wait(self.interval)
        except OSError as exc:
            logger.warning("copying the log to the output torchd start was given ended: %s", exc)
        finally:
            for followed in self._files:
                followed.close()
            os.close(self.out)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.out, view):]
