"""worker/logs.py in a child process whose stderr is a file, as a worker's is a pipe to the
daemon: fds 1 and 2 prefixed by the pump thread, and log records written past it."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.daemon import REPO

CHILD = textwrap.dedent('''
    import logging, os
    from worker import logs
    out = logs.PrefixedOutput("[worker 7] ").start()
    logs.configure_logging("[worker 7] ", stream=out.direct_stream())
    print("printed", flush=True)
    os.write(2, b"from C\\n")
    logging.getLogger("handler").info("logged")
    out.close()
''')

# The same, with a pump that delivers nothing: what still arrives did not pass through it.
PUMP_OFF = "from worker import logs\nlogs.PrefixedOutput._write = lambda self, data: None\n"


def run_child(tmp_path: Path, code: str) -> list[str]:
    output = tmp_path / "stderr"
    with open(output, "wb") as stderr:
        subprocess.run([sys.executable, "-c", code], stderr=stderr, cwd=REPO, timeout=60,
                       check=True)
    return output.read_text().splitlines()


def test_every_kind_of_output_is_prefixed(tmp_path):
    lines = run_child(tmp_path, CHILD)
    assert "[worker 7] printed" in lines and "[worker 7] from C" in lines
    [logged] = [line for line in lines if line.endswith("INFO handler: logged")]
    assert logged.startswith("[worker 7] ") and logged.count("[worker 7]") == 1


def test_log_records_do_not_wake_the_pump(tmp_path):
    # a handler that logs each request would pay a thread's wake-up and two more system calls
    lines = run_child(tmp_path, PUMP_OFF + CHILD)
    assert [line.split(" INFO ")[1] for line in lines] == ["handler: logged"]
