"""Starting: `torchd start` returns with its startup models serving (the daemon listens only
once they are loaded); a busy port fails the start at once; SIGTERM while starting abandons the
start; a restored snapshot wins over --models; its logs roll, and a log that cannot be written
loses lines, never requests. (start/status/stop and the refused second start
are in tests/daemon/ops/test_cli_processes.py.)"""
from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import requests

from daemon.osutil import pid_gone
from daemon.ops import pidfile
from tests.support.daemon import REPO, Daemon, free_ports
from tests.support.ops import NotifyListener, build_slow_archive, make_store
from tests.support.waiting import wait_until


def torchd(*args: str, cwd: Path, stdout: Any = subprocess.PIPE,
           preexec_fn: Any = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TS_") and k not in ("LOG_LOCATION", "NOTIFY_SOCKET")}
    # this checkout's code, whatever the cwd: an installed torchd may be another checkout's
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "daemon.ops.cli", *args], cwd=cwd, env=env,
                          stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=90,
                          check=False, preexec_fn=preexec_fn)


def kill_tree(pid: int | None) -> None:
    if pid is None:
        return
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def noop_to_start(archive_dir: Path, tmp_path: Path, settings: str) -> dict[str, int]:
    """tmp_path made ready for ``torchd start --models noop=noop.mar``: the store, and a
    config.properties with free loopback ports, one worker a model and ``settings``; the
    ports by listener."""
    chosen = free_ports(5)
    ports = dict(zip(("inference", "management", "metrics"), chosen))
    make_store(archive_dir, tmp_path / "store", ["noop"])
    (tmp_path / "config.properties").write_text(
        "".join(f"{name}_address=http://127.0.0.1:{port}\n" for name, port in ports.items())
        + f"grpc_inference_port={chosen[3]}\ngrpc_management_port={chosen[4]}\n"
        + "model_store=store\ndefault_workers_per_model=1\n" + settings)
    return ports


def test_start_returns_with_startup_models_serving(archive_dir: Path, tmp_path: Path):
    ports = noop_to_start(archive_dir, tmp_path, "worker_spawn=exec\nmetrics_mode=log\n")
    pid_path = tmp_path / "logs" / "torchd.pid"
    output = tmp_path / "ts.log"
    try:
        # `torchserve --start > ts.log`, as TorchServe's benchmark-ab.py runs it: the log is
        # copied there as it grows, "Model server started" (what such scripts wait for) too
        with open(output, "w") as redirected:
            started = torchd("start", "--models", "noop=noop.mar", "--ncs", cwd=tmp_path,
                             stdout=redirected)
        assert started.returncode == 0, output.read_text() + started.stderr
        predicted = requests.post(f"http://127.0.0.1:{ports['inference']}/predictions/noop",
                                  data=b"x", timeout=30)
        assert predicted.status_code == 200 and predicted.json() == {"ok": 1}
        pid = pidfile.read_pid(pid_path)
        assert f"Model server started: torchd pid {pid}," in output.read_text()
        wait_until(lambda: 'inference "POST /predictions/noop" 200' in output.read_text(),
                   timeout=30, what="the request's access line copied to start's output")
        # the metric lines too, as benchmark-ab.py reads them: the value after the 3rd colon
        queue_times = wait_until(lambda: [line.split("|")[0].split(":")[3]
                                          for line in output.read_text().splitlines()
                                          if "QueueTime" in line and "|#" in line],
                                 timeout=30, what="a QueueTime line copied to start's output")
        assert float(queue_times[0]) >= 0

        stopped = torchd("stop", cwd=tmp_path)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert pid_gone(pid) and not pid_path.exists()
        logs = tmp_path / "logs"
        log = (logs / "ts_log.log").read_text()   # every line, under TorchServe's name
        assert ('startup model noop.mar: Model "noop" Version: 1.0 registered with 1 initial '
                'workers') in log
        assert "torchd stopped" in log and "Model server started." in log
        copied = output.read_text()   # the daemon copies its last lines before it exits
        assert "Model server started." in copied and "torchd stopped\n" in copied
        # TorchServe's model_log.log and access_log.log: those loggers' lines again, alone
        model_log = (logs / "model_log.log").read_text().splitlines()
        access_log = (logs / "access_log.log").read_text().splitlines()
        assert model_log and all(" INFO torchd.worker: [" in line for line in model_log)
        assert any("model noop loaded in" in line for line in model_log)
        assert access_log and all(" INFO torchd.access: " in line for line in access_log)
        assert any('inference "POST /predictions/noop" 200' in line for line in access_log)
        assert set(model_log + access_log) <= set(log.splitlines())
    finally:
        kill_tree(pidfile.read_pid(pid_path))


def test_foreground_writes_torchserves_log_files_beside_its_output(archive_dir, tmp_path):
    """`torchserve --start --foreground` (a terminal, a container's output) also writes its log
    files, as TorchServe's log4j2 configuration does wherever its console goes."""
    d = Daemon(tmp_path / "d", make_store(archive_dir, tmp_path / "d" / "store", ["noop"]),
               {"default_workers_per_model": 1})
    logs = d.workdir / "logs"
    try:
        d.start("--models", "noop=noop.mar", "--foreground", command="--start")
        predicted = d.infer("POST", "/predictions/noop", data=b"x")
        assert predicted.status_code == 200, predicted.text
        request_id = predicted.headers["x-request-id"]
        wait_until(lambda: (logs / "access_log.log").exists()
                   and request_id in (logs / "access_log.log").read_text(),
                   timeout=30, what="the request's line in access_log.log")
        assert d.stop() == 0
        output = d.log().splitlines()
        log = (logs / "ts_log.log").read_text().splitlines()
        assert any(line.endswith("Model server started.") for line in log)
        assert log[-1].endswith("torchd stopped") and set(log) <= set(output)
        assert any(request_id in line for line in log)
        model_log = (logs / "model_log.log").read_text().splitlines()
        access_log = (logs / "access_log.log").read_text().splitlines()
        assert any("model noop loaded in" in line for line in model_log)
        assert all(" INFO torchd.worker: [" in line for line in model_log)
        assert access_log and all(" INFO torchd.access: " in line for line in access_log)
        assert set(model_log + access_log) <= set(log)
    finally:
        d.cleanup()


def test_a_busy_port_fails_the_start_at_once_naming_the_listener(archive_dir, tmp_path):
    d = Daemon(tmp_path / "d", make_store(archive_dir, tmp_path / "d" / "store", ["noop"]),
               {"worker_spawn": "exec"})
    with socket.create_server(("127.0.0.1", d.ports["management"])):
        log = d.failed_start_log("--models", "noop=noop.mar")
    assert (f"cannot start: management API cannot listen on "
            f"http://127.0.0.1:{d.ports['management']}: Address already in use") in log
    assert "starting worker" not in log   # failed before loading anything


def test_a_missing_model_store_fails_the_start_naming_it(tmp_path):
    # TorchServe's test_snapshot: "fails to start if the model store directory is non existent"
    d = Daemon(tmp_path / "d", tmp_path / "no-such-store", {"worker_spawn": "exec"})
    assert (f"cannot start: the model store {tmp_path / 'no-such-store'} is not a directory"
            in d.failed_start_log())


def test_sigterm_while_starting_abandons_the_start(archive_dir, tmp_path):
    workdir = tmp_path / "d"
    store = make_store(archive_dir, workdir / "store", [])
    build_slow_archive(store, workdir / "slow-src")
    flag = workdir / "slow-load"
    flag.touch()
    listener = NotifyListener()
    d = Daemon(workdir, store, {"worker_spawn": "exec"},
               env={"NOTIFY_SOCKET": listener.path, "OPS_SLOW_LOAD_FLAG": str(flag)})
    try:
        d.start("--models", "slow=slow.mar", wait=False)
        listener.wait_for("STATUS=loading startup model slow.mar (1/1)", timeout=60)
        loading = wait_until(d.track_descendants, timeout=10, what="the slow worker")
        d.signal(signal.SIGTERM)
        assert d.proc.wait(20) == 0
        _gone, alive = psutil.wait_procs(loading, timeout=10)
        assert not alive
        listener.wait_for("STOPPING=1", timeout=5)   # sent before the exit: READY=1 would be too
        assert "READY=1" not in listener.lines()
        assert "signalled while starting: abandoning the start" in d.log()
    finally:
        d.cleanup()
        listener.close()


def test_the_snapshot_wins_over_startup_models(archive_dir, tmp_path):
    d = Daemon(tmp_path / "d", make_store(archive_dir, tmp_path / "d" / "store", ["noop"]),
               {"worker_spawn": "exec", "default_workers_per_model": 1})
    try:
        d.start("--models", "noop=noop.mar", ncs=False)
        scaled = d.mgmt("PUT", "/models/noop", params={"min_worker": 2, "synchronous": "true"})
        assert scaled.status_code == 200, scaled.text
        assert d.stop() == 0
        d.start("--models", "noop=noop.mar", ncs=False)
        [doc] = d.describe("noop")
        assert doc["loadedAtStartup"] is True and doc["minWorkers"] == 2
        assert [w["status"] for w in doc["workers"]] == ["READY"] * 2
        log = d.log()
        assert "startup model noop.mar: noop already registered from the snapshot" in log
        assert "startup model noop.mar failed" not in log
        # serve's log is its stderr alone: TorchServe's files are torchd start's
        assert not any((d.workdir / "logs" / name).exists()
                       for name in ("ts_log.log", "model_log.log", "access_log.log"))
    finally:
        d.cleanup()


def test_start_sets_its_log_and_the_metric_logs_aside_past_log_file_max_size(archive_dir,
                                                                               tmp_path):
    """As TorchServe's log4j2 rolls its logs: torchd start's ts_log.log (the daemon's stderr),
    its access_log.log and the metric logs begin anew past the size, the full ones kept as
    <name>.1 ... .5."""
    ports = noop_to_start(archive_dir, tmp_path, "log_file_max_size=4K\nmetrics_mode=log\n")
    inference = ports["inference"]
    logs = tmp_path / "logs"
    pid_path = logs / "torchd.pid"
    url = f"http://127.0.0.1:{inference}/predictions/noop"
    try:
        started = torchd("start", "--models", "noop=noop.mar", "--ncs", cwd=tmp_path)
        assert started.returncode == 0, started.stdout + started.stderr

        def set_aside() -> bool:   # each request adds an access line and metric lines
            assert requests.post(url, data=b"x", timeout=30).status_code == 200
            return all((logs / f"{name}.log.1").exists()
                       for name in ("ts_log", "ts_metrics", "access_log"))

        wait_until(set_aside, 60, 0.05, "ts_log.log.1, ts_metrics.log.1 and access_log.log.1")
        begun = (logs / "ts_log.log").read_text()   # the daemon's start is in the full one
        assert "starting (pid" not in begun and "starting (pid" in (
            logs / "ts_log.log.1").read_text()
        assert "ts_log.log began: the last one is ts_log.log.1" in begun
        assert (logs / "ts_metrics.log.1").stat().st_size >= 4096
        assert (logs / "access_log.log.1").stat().st_size >= 4096
        last = requests.post(url, data=b"last", timeout=30)
        assert last.status_code == 200
        assert torchd("stop", cwd=tmp_path).returncode == 0
        assert "torchd stopped" in (logs / "ts_log.log").read_text()
        # the last request's line: in the new file, or in .1 where that line filled it
        assert any(last.headers["x-request-id"] in (logs / name).read_text()
                   for name in ("access_log.log", "access_log.log.1"))
    finally:
        kill_tree(pidfile.read_pid(pid_path))


def test_logs_that_cannot_be_written_lose_lines_never_requests(archive_dir, tmp_path):
    """A full disk under the logs, made here by the file size limit (RLIMIT_FSIZE: each write
    past it fails with EFBIG, as a full disk's fail with ENOSPC; Python ignores SIGXFSZ), with
    every log of torchd start filling: the daemon serves and answers management calls all along,
    and once the files take lines again, the logs say what was lost."""
    ports = noop_to_start(archive_dir, tmp_path, "metrics_mode=log\n")
    inference, management = ports["inference"], ports["management"]
    logs = tmp_path / "logs"
    pid_path = logs / "torchd.pid"
    limit = 64 * 1024
    url = f"http://127.0.0.1:{inference}/predictions/noop"

    def small_files() -> None:   # in start's child: the daemon inherits it
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    def answered() -> None:
        response = requests.post(url, data=b"x", timeout=10)
        assert response.status_code == 200, response.text

    try:
        started = torchd("start", "--models", "noop=noop.mar", "--ncs", cwd=tmp_path,
                         preexec_fn=small_files)
        assert started.returncode == 0, started.stdout + started.stderr
        pid = pidfile.read_pid(pid_path)

        def full() -> bool:
            answered()
            return all((logs / name).stat().st_size >= limit - 512
                       for name in ("ts_log.log", "ts_metrics.log"))

        wait_until(full, 120, 0, "ts_log.log and ts_metrics.log at the file size limit")
        for _ in range(50):   # every write of the stderr log and the metric log fails now
            answered()
        scaled = requests.put(f"http://127.0.0.1:{management}/models/noop",
                              params={"min_worker": 2, "synchronous": "true"}, timeout=60)
        assert scaled.status_code == 200, scaled.text
        assert (logs / "ts_log.log").stat().st_size <= limit

        psutil.Process(pid).rlimit(psutil.RLIMIT_FSIZE,
                                   (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

        def said_so() -> bool:
            answered()
            log = (logs / "ts_log.log").read_text(errors="replace")
            return ("this log could not be written for a while" in log
                    and f"{logs / 'ts_metrics.log'} is written again, after" in log)

        wait_until(said_so, 30, 0.05, "the logs saying lines were lost")
        stopped = torchd("stop", cwd=tmp_path)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert pid_gone(pid)
    finally:
        kill_tree(pidfile.read_pid(pid_path))
