"""The daemon's default log output: same text as logging's Formatter, written in batches."""
from __future__ import annotations

import asyncio
import errno
import io
import logging
import sys
import threading
import time

import pytest

from daemon import logformat
from daemon.ops.foreground import LOG_DATEFMT, LOG_FORMAT
from daemon.logfiles import RotatingLines
from daemon.logformat import (BatchingStreamHandler, DirectLines, SecondsFormatter,
                              batched_stderr)
from daemon.workers import launcher
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(10)


class CountingStream(io.StringIO):
    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def record(level: int, message: str, created: float,
           name: str = "torchd.test") -> logging.LogRecord:
    rec = logging.LogRecord(name, level, __file__, 1, message, (), None)
    rec.created = created
    return rec


def test_seconds_formatter_writes_what_logging_writes():
    ours = SecondsFormatter(LOG_FORMAT, LOG_DATEFMT)
    stock = logging.Formatter(LOG_FORMAT, LOG_DATEFMT)
    for created in (1700000000.1, 1700000000.9, 1700000001.0, 1700003600.5, 1700000000.2):
        rec = record(logging.INFO, "hello", created)
        assert ours.format(rec) == stock.format(rec)


class Ticks:
    """Stands in for the flush thread's clock: each of its sleeps lasts until the test ticks."""

    def __init__(self) -> None:
        self._ticks = threading.Semaphore(0)
        self.time, self.strftime = time.time, time.strftime

    def sleep(self, seconds: float) -> None:
        self._ticks.acquire()

    def tick(self) -> None:
        self._ticks.release()


def test_access_lines_are_flushed_by_the_timer_others_at_once(monkeypatch):
    ticks = Ticks()
    monkeypatch.setattr(logformat, "time", ticks)   # the timer fires when the test says
    stream = CountingStream()
    handler = BatchingStreamHandler(stream, batched=("torchd.access",), interval=0.05)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for i in range(100):
        handler.handle(record(logging.INFO, f"line {i}", time.time(), "torchd.access"))
    assert stream.flushes == 0
    assert stream.getvalue().count("\n") == 100
    ticks.tick()
    wait_until(lambda: stream.flushes, timeout=5, what="the timer's flush")
    assert stream.flushes == 1
    before = stream.flushes
    handler.handle(record(logging.INFO, "started", time.time()))
    assert stream.flushes == before + 1
    assert stream.getvalue().endswith("started\n")


def test_batched_stderr_is_not_line_buffered(capfd):
    stream = batched_stderr()
    stream.write("one\n")
    assert capfd.readouterr().err == ""     # held back
    stream.flush()
    assert capfd.readouterr().err == "one\n"


@pytest.fixture
def default_output(monkeypatch):
    """torchd's default log output (configure_logging without a config file) into a buffer."""
    stream = io.StringIO()
    handler = BatchingStreamHandler(stream, interval=60)   # flushed by the test
    handler.setFormatter(SecondsFormatter(LOG_FORMAT, LOG_DATEFMT))
    monkeypatch.setattr(logging.root, "level", logging.INFO)
    lines = DirectLines()
    lines.use(handler)

    def only_ours() -> None:
        # called in the test itself: pytest adds its capturing handlers after the fixtures
        monkeypatch.setattr(logging.root, "handlers", [handler])
    yield lines, handler, stream, only_ours


def test_a_direct_line_reads_as_the_record_it_stands_for(default_output):
    lines, handler, stream, only_ours = default_output
    access = logging.getLogger("torchd.access")
    only_ours()
    assert lines.write(access, 'inference "POST /p" 200 0.4ms id')
    written = stream.getvalue()
    stock = logging.Formatter(LOG_FORMAT, LOG_DATEFMT).format(
        record(logging.INFO, 'inference "POST /p" 200 0.4ms id', time.time(), "torchd.access"))
    assert written == stock + "\n"   # (both within the same second, or the test is rerun)


def test_a_direct_line_steps_aside_when_it_would_miss_someone(default_output):
    lines, handler, stream, only_ours = default_output
    access = logging.getLogger("torchd.access")
    only_ours()
    other = logging.StreamHandler(io.StringIO())
    logging.root.handlers.append(other)          # a test capturing logs, say
    assert not lines.write(access, "x")
    logging.root.handlers.remove(other)
    access.addFilter(lambda rec: False)          # a filter of the logger's own
    try:
        assert not lines.write(access, "x")
    finally:
        access.filters.clear()
    assert not lines.write(logging.getLogger("torchd.other"), "x")   # not a batched logger
    custom = DirectLines()
    handler.setFormatter(SecondsFormatter("%(asctime)s %(threadName)s %(message)s", LOG_DATEFMT))
    custom.use(handler)                          # a format that needs a real record
    assert not custom.write(access, "x")
    assert stream.getvalue() == ""


def test_a_batched_loggers_lines_go_to_a_file_of_their_own_too(default_output, tmp_path):
    """TorchServe's access_log.log and model_log.log under torchd start: the same lines as in
    the whole log, direct or made from a record, written when the handler flushes; with
    --foreground its ts_log.log too, every line."""
    lines, handler, stream, only_ours = default_output
    access = logging.getLogger("torchd.access")
    own_file = tmp_path / "access_log.log"
    every_file = tmp_path / "ts_log.log"
    handler.also_to("torchd.access", RotatingLines(own_file, 0, buffered=True))
    handler.every_line_to(RotatingLines(every_file, 0, buffered=True))
    with pytest.raises(ValueError):   # a line of another logger is written at once, alone
        handler.also_to("daemon.ops.server", RotatingLines(tmp_path / "other.log", 0))
    only_ours()
    assert lines.write(access, 'inference "POST /p" 200 0.4ms a')
    handler.handle(record(logging.INFO, 'management "GET /models" 200 1.0ms b', time.time(),
                          "torchd.access"))
    handler.handle(record(logging.INFO, "[worker 9000] not an access line", time.time(),
                          "torchd.worker"))
    assert own_file.read_text() == ""
    handler.flush()
    whole = stream.getvalue().splitlines()
    assert own_file.read_text().splitlines() == whole[:2]
    assert every_file.read_text().splitlines() == whole and len(whole) == 3
    assert whole[0].endswith('torchd.access: inference "POST /p" 200 0.4ms a')
    assert whole[1].endswith('torchd.access: management "GET /models" 200 1.0ms b')


class FullStream(io.StringIO):
    """A stream whose flushes fail while ``full`` (a full disk), as batched_stderr's do."""
    full = True

    def flush(self) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        super().flush()


def test_a_log_that_cannot_be_written_raises_nowhere_and_says_so_later(default_output):
    lines, handler, stream, only_ours = default_output
    full = FullStream()
    handler.setStream(full)
    only_ours()
    daemon_log = logging.getLogger("daemon.ops.server")
    daemon_log.info("not written")      # flushed at once: fails, raises nowhere
    daemon_log.info("nor this")
    assert lines.write(logging.getLogger("torchd.access"), "an access line")
    handler.flush()                     # as the flush thread does
    full.full = False
    daemon_log.info("written")
    said = full.getvalue().splitlines()
    assert said[-2].endswith("daemon.ops.server: written")   # the first line through, then:
    assert said[-1].endswith("this log could not be written for a while (3 failed write(s), "
                             "the first: [Errno 28] No space left on device): lines were lost")


def test_forwarded_worker_output_is_written_as_batched_direct_lines(default_output, monkeypatch):
    """A handler that logs every request makes the daemon forward a line per request: those go
    the access log's way (no LogRecord, no write per line), through the real output pipe."""
    lines, handler, stream, only_ours = default_output
    monkeypatch.setattr(launcher, "DIRECT_LINES", lines)
    counting = CountingStream()
    handler.setStream(counting)
    made: list[str] = []   # the loggers that made a LogRecord
    stock_factory = logging.getLogRecordFactory()
    only_ours()

    async def forward() -> int:
        others = set(launcher._forwarders)
        child = await launcher.exec_with_output_pipe(
            sys.executable, "-c", "for i in range(3): print(f'[worker 9000] line {i}')")
        code = await child.wait()
        await asyncio.gather(*(launcher._forwarders - others))   # the pipe read to its end
        return code

    logging.setLogRecordFactory(
        lambda name, *args, **kwargs: made.append(name) or stock_factory(name, *args, **kwargs))
    try:
        assert asyncio.run(forward()) == 0
    finally:
        logging.setLogRecordFactory(stock_factory)
    written = counting.getvalue().splitlines()
    assert [line.split(" ", 2)[1:] for line in written] == [
        ["INFO", f"torchd.worker: [worker 9000] line {i}"] for i in range(3)]
    assert counting.flushes == 0      # left for the flush timer, as access lines are
    assert "torchd.worker" not in made
