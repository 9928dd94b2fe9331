"""daemon/logfiles.py: files set aside by name (the oldest of five dropped), a line file rolled
past its size, and a process's stderr log rolled under it (a real child process whose stdout
and stderr are a file)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from daemon.logfiles import KEEP, RotatingLines, StderrLog, set_aside
from tests.support.daemon import REPO


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
