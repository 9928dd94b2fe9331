"""daemon/logfiles.py: files set aside by name (the oldest of five dropped), a line file rolled
past its size, a process's stderr log rolled under it (a real child process whose stdout
and stderr are a file), and that log copied to another output as it grows, across the roll."""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from daemon.logfiles import (KEEP, LogCopy, RotatingLines, StderrLog, is_init_output,
                             is_log_copy_output, set_aside)
from tests.support.daemon import REPO
from tests.support.waiting import wait_until


def names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_set_aside_shifts_the_names_and_drops_the_oldest(tmp_path):
    log = tmp_path / "x.log"
    for round_ in range(KEEP + 2):
        log.write_text(f"round {round_}")
        set_aside(log)
    assert names(tmp_path) == [f"x.log.{n}" for n in range(1, KEEP + 1)]
    assert (tmp_path / "x.log.1").read_text() == f"round {KEEP + 1}"
    assert (tmp_path / f"x.log.{KEEP}").read_text() == "round 2"


def test_rotating_lines_begins_a_new_file_past_the_size(tmp_path):
    path = tmp_path / "m.log"
    path.write_text("x" * 50 + "\n")   # what an earlier run left counts
    lines = RotatingLines(path, max_bytes=100)
    lines.write("a" * 40 + "\n")
    assert names(tmp_path) == ["m.log"]
    lines.write("b" * 40 + "\n")       # 133 bytes: set aside after this line, never within it
    lines.write("c\n")
    lines.close()
    assert (tmp_path / "m.log.1").read_text().endswith("b" * 40 + "\n")
    assert path.read_text() == "c\n"
    unbounded = RotatingLines(tmp_path / "u.log", max_bytes=0)
    unbounded.write("z" * 500 + "\n")
    unbounded.close()
    assert not (tmp_path / "u.log.1").exists()


def test_buffered_rotating_lines_wait_for_flush_and_set_aside_whole(tmp_path):
    path = tmp_path / "access_log.log"
    lines = RotatingLines(path, max_bytes=100, buffered=True)
    lines.write("a" * 40 + "\n")
    assert path.read_text() == ""          # in the buffer until the handler flushes
    lines.flush()
    assert path.read_text() == "a" * 40 + "\n"
    lines.write("b" * 70 + "\n")           # past the size: what was buffered goes with it
    lines.write("c\n")
    assert (tmp_path / "access_log.log.1").read_text() == "a" * 40 + "\n" + "b" * 70 + "\n"
    lines.close()
    assert path.read_text() == "c\n"


def test_a_file_that_takes_no_lines_loses_them_and_says_so_once(caplog):
    """/dev/full fails every write with ENOSPC, as a full disk does: the writer (a request's
    metric lines, say) never sees it."""
    lines = RotatingLines(Path("/dev/full"), max_bytes=0)
    buffered = RotatingLines(Path("/dev/full"), max_bytes=0, buffered=True)
    with caplog.at_level(logging.WARNING, logger="daemon.logfiles"):
        for _ in range(3):
            lines.write("a line\n")
            buffered.write("a line\n")
            buffered.flush()
    lines.close()
    buffered.close()
    said = [r.getMessage() for r in caplog.records]
    assert said == ["cannot write /dev/full ([Errno 28] No space left on device): its lines "
                    "are lost until it can be written again"] * 2


CHILD = textwrap.dedent('''
    import logging, sys
    from pathlib import Path
    from daemon.logfiles import StderrLog
    path = Path(sys.argv[1])
    assert StderrLog.of_this_process(path.with_name("other.log"), 100) is None
    assert StderrLog.of_this_process(path, 0) is None
    log = StderrLog.of_this_process(path, 100)
    logging.basicConfig(format="%(message)s")
    print("before: " + "x" * 120, flush=True)
    logging.warning("still before")
    assert log.check()
    assert not log.check()
    print("after", flush=True)
    logging.warning("logged after")
''')


def test_stderr_log_moves_both_descriptors_to_a_new_file(tmp_path):
    path = tmp_path / "torchd.log"
    (tmp_path / "other.log").write_text("")
    with open(path, "ab") as log:
        done = subprocess.run([sys.executable, "-c", CHILD, str(path)], stdout=log,
                              stderr=subprocess.STDOUT, cwd=REPO, timeout=60)
    assert done.returncode == 0, (path.read_text(), (tmp_path / "torchd.log.1").read_text())
    assert (tmp_path / "torchd.log.1").read_text() == "before: " + "x" * 120 + \
        "\nstill before\n"
    assert path.read_text() == "after\nlogged after\n"
    assert StderrLog.of_this_process(path, 100) is None   # this process's stderr is not it


COPYING_CHILD = textwrap.dedent('''
    import logging, sys
    from pathlib import Path
    from daemon.logfiles import LogCopy, StderrLog
    path, out = Path(sys.argv[1]), int(sys.argv[2])
    print("before the copy", flush=True)
    copy = LogCopy.of_this_process(out).start()
    log = StderrLog.of_this_process(path, 10)
    logging.basicConfig(format="%(message)s")
    logging.warning("one")
    print("printed", flush=True)
    assert log.check()
    logging.warning("two")
    copy.close()
''')


def read_to_end(fd: int) -> bytes:
    """Blocks until every writer has closed the pipe (the copy closes its end as it ends)."""
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def test_the_copy_has_every_line_after_it_began_across_a_set_aside(tmp_path):
    path = tmp_path / "torchd.log"
    read_end, write_end = os.pipe()
    try:
        with open(path, "ab") as log:
            done = subprocess.run([sys.executable, "-c", COPYING_CHILD, str(path), str(write_end)],
                                  stdout=log, stderr=subprocess.STDOUT, cwd=REPO, timeout=60,
                                  pass_fds=(write_end,))
    finally:
        os.close(write_end)
    copied = read_to_end(read_end)
    assert done.returncode == 0, path.read_text()
    assert copied == b"one\nprinted\ntwo\n"
    assert (tmp_path / "torchd.log.1").read_text() == "before the copy\none\nprinted\n"


def test_a_reader_that_stops_reading_holds_up_the_copy_alone(tmp_path):
    source = os.open(tmp_path / "torchd.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    read_end, write_end = os.pipe()
    copy = LogCopy(write_end, source=source).start()
    line = b"x" * 1023 + b"\n"
    for _ in range(1024):    # 1 MiB, far more than the pipe holds: the writer goes on
        os.write(source, line)
    copy.close(wait=0.5)
    assert copy._thread.is_alive()   # waiting for the reader, which has all of it once it reads
    assert read_to_end(read_end) == line * 1024
    copy._thread.join(30)
    assert not copy._thread.is_alive()
    os.close(source)


def test_the_copy_ends_when_its_reader_has_gone(tmp_path, caplog):
    source = os.open(tmp_path / "torchd.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    read_end, write_end = os.pipe()
    copy = LogCopy(write_end, source=source).start()
    os.close(read_end)
    os.write(source, b"nobody reads this\n")
    with caplog.at_level(logging.WARNING, logger="daemon.logfiles"):
        copy.close(wait=30)
    assert not copy._thread.is_alive()
    assert "copying the log to the output torchd start was given ended: [Errno 32] Broken pipe" \
        in caplog.text
    os.write(source, b"the log goes on\n")
    os.close(source)


def test_only_the_output_of_pid_1_is_copied_to():
    read_end, write_end = os.pipe()
    other_read, other_write = os.pipe()
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        assert is_init_output(write_end, f"/proc/self/fd/{write_end}")
        assert not is_init_output(other_write, f"/proc/self/fd/{write_end}")
        assert not is_init_output(null, f"/proc/self/fd/{null}")    # nothing to copy to
        assert not is_init_output(write_end, "/proc/no-such-pid/fd/1")   # not ours to look at
    finally:
        for fd in (read_end, write_end, other_read, other_write, null):
            os.close(fd)


def test_start_copies_its_log_to_pid_1s_output_or_a_file_but_the_log_itself(tmp_path):
    log = tmp_path / "torchd.log"
    log.touch()
    read_end, write_end = os.pipe()
    other_read, other_write = os.pipe()
    redirected = os.open(tmp_path / "ts.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    itself = os.open(log, os.O_WRONLY | os.O_APPEND)
    null = os.open(os.devnull, os.O_WRONLY)
    pid_1 = f"/proc/self/fd/{write_end}"
    try:
        assert is_log_copy_output(redirected, log, pid_1)    # `torchserve --start > ts.log`
        assert is_log_copy_output(redirected, tmp_path / "not-yet", pid_1)
        assert is_log_copy_output(write_end, log, pid_1)     # PID 1's pipe
        assert not is_log_copy_output(other_write, log, pid_1)   # $(torchd start)
        assert not is_log_copy_output(itself, log, pid_1)    # it would copy its own copies
        assert not is_log_copy_output(null, log, pid_1)
    finally:
        for fd in (read_end, write_end, other_read, other_write, redirected, itself, null):
            os.close(fd)


def test_the_metric_logs_are_copied_too_from_now_across_a_set_aside(tmp_path):
    """As TorchServe's metric loggers write to its console as well: `follow`. A file that is
    there is copied from its end (an earlier run's lines stay out); one yet to be made, from
    its start."""
    source = os.open(tmp_path / "torchd.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    (tmp_path / "ts_metrics.log").write_text("an earlier run's line\n")
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    copy = LogCopy(write_end, source=source)
    copy.follow(tmp_path / "ts_metrics.log")
    copy.follow(tmp_path / "model_metrics.log")
    copy.start()
    received = bytearray()

    def copied() -> str:
        with contextlib.suppress(BlockingIOError):
            received.extend(os.read(read_end, 1 << 16))
        return received.decode()

    frontend = RotatingLines(tmp_path / "ts_metrics.log", 60)
    model = RotatingLines(tmp_path / "model_metrics.log", 60)
    try:
        os.write(source, b"a log line\n")
        frontend.write("Requests2XX.Count:1.0|#Level:Host\n")
        model.write("PredictionTime.Milliseconds:0.5|#ModelName:m\n")
        wait_until(lambda: copied().count("\n") == 3, 30, what="three lines copied")
        model.write("PredictionTime.Milliseconds:0.7|#ModelName:m\n")   # past 60: set aside
        model.write("PredictionTime.Milliseconds:0.9|#ModelName:m\n")
        frontend.write("Requests2XX.Count:2.0|#Level:Host\n")
    finally:
        frontend.close()
        model.close()
        copy.close(wait=30)
        os.close(source)
    lines = wait_until(lambda: copied().count("\n") == 6 and copied().splitlines(),
                       30, what="six lines copied")
    os.close(read_end)
    # each file's lines in their order; the files' lines fall among each other as they may
    assert "an earlier run's line" not in lines and "a log line" in lines
    assert [line for line in lines if line.startswith("Prediction")] == [
        f"PredictionTime.Milliseconds:{value}|#ModelName:m" for value in ("0.5", "0.7", "0.9")]
    assert [line for line in lines if line.startswith("Requests")] == [
        f"Requests2XX.Count:{value}|#Level:Host" for value in ("1.0", "2.0")]
    assert (tmp_path / "model_metrics.log.1").exists()


def test_lines_of_several_files_are_copied_whole(tmp_path):
    """Each file's lines are many chunks' worth, written before the copy reads any: what is
    copied is every line, each whole, however the files' chunks fall."""
    source = os.open(tmp_path / "torchd.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    read_end, write_end = os.pipe()
    copy = LogCopy(write_end, source=source)
    copy.follow(tmp_path / "ts_metrics.log")
    metrics = RotatingLines(tmp_path / "ts_metrics.log", 0)
    written = []
    for number in range(3000):   # about 300 KiB a file, in lines of 97 to 101 bytes
        line = f"log line {number} " + "x" * (80 + number % 5) + "\n"
        os.write(source, line.encode())
        metrics.write(line.replace("log", "metric"))
        written += [line, line.replace("log", "metric")]
    copy.start()
    copy.close(wait=0)     # far more than the pipe holds: it ends once it has all been read
    copied = read_to_end(read_end)
    copy._thread.join(30)
    metrics.close()
    os.close(source)
    assert sorted(copied.decode().splitlines(keepends=True)) == sorted(written)
