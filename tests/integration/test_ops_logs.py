"""Logs through the real daemon: --log-config (a dictConfig JSON file) sends the daemon's logging
to a file, with one access log line per request carrying its request id; a worker's stdout and
stderr are forwarded line by line through the daemon's logging (so into that file too), tagged
with the worker id."""
from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support.daemon import Daemon
from tests.support.ops import file_log_config, make_store
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def logged(archive_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("ops-logs")
    log_file = workdir / "daemon.log"
    log_config = file_log_config(workdir / "logging.json", log_file,
                                 "CFG %(levelname)s %(name)s: %(message)s")
    d = Daemon(workdir, make_store(archive_dir, workdir / "store", ["echo"]),
               {"worker_spawn": "exec"})
    try:
        d.start("--log-config", str(log_config))
        assert d.register("echo.mar", model_name="logecho", initial_workers=1).status_code == 200
        yield SimpleNamespace(daemon=d, log_file=log_file)
    finally:
        d.cleanup()


def access_lines(log_file: Path) -> list[str]:
    return [line for line in log_file.read_text().splitlines()
            if line.startswith("CFG INFO torchd.access: ")]


def test_log_config_sends_the_daemon_log_to_its_file(logged):
    text = logged.log_file.read_text()
    assert "CFG INFO daemon.ops.server: torchd ready: serving 0 model version(s)" in text
    assert "CFG INFO daemon.control.manager: registered logecho 1.0 from echo.mar" in text
    stderr = logged.daemon.log()
    assert "daemon.ops.server" not in stderr and "torchd.access" not in stderr


def test_one_access_log_line_per_request_with_its_id(logged):
    d = logged.daemon
    responses = [d.infer("POST", "/predictions/logecho", data=b"x"),
                 d.infer("POST", "/predictions/nobody"),
                 d.mgmt("GET", "/models/logecho")]
    ids = [r.headers["x-request-id"] for r in responses]
    assert len(set(ids)) == 3
    wait_until(lambda: len([line for line in access_lines(logged.log_file)
                            if any(i in line for i in ids)]) == 3, timeout=5,
               what="three access lines")
    lines = [line for line in access_lines(logged.log_file) if any(i in line for i in ids)]
    patterns = [rf'inference "POST /predictions/logecho" 200 [\d.]+ms {ids[0]}',
                rf'inference "POST /predictions/nobody" 404 [\d.]+ms {ids[1]}',
                rf'management "GET /models/logecho" 200 [\d.]+ms {ids[2]}']
    for line, pattern in zip(lines, patterns):
        assert re.search(pattern, line), (line, pattern)


def test_worker_output_is_forwarded_with_the_worker_id(logged):
    d = logged.daemon
    [worker] = d.workers("logecho")
    tag = f"[worker {worker['id']}] "
    prefix = "CFG INFO torchd.worker: " + tag
    lines = wait_until(lambda: [line[len("CFG INFO torchd.worker: "):]
                                for line in logged.log_file.read_text().splitlines()
                                if line.startswith(prefix)],
                       timeout=5, what="worker lines")
    # print() in the handler (stdout) and the worker's own logging (stderr).
    assert f"{tag}echo handler initialized for logecho" in lines
    assert any(line.startswith(tag) and "worker.service" in line for line in lines), lines
