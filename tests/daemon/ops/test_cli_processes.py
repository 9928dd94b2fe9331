"""torchd's command line against real processes: serve/start/stop/status with pid files, a
stand-in server and the real one."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import psutil
import pytest

from daemon.config.settings import load_config
from daemon.ops import cli, pidfile
from daemon.osutil import pid_gone
from tests.support.daemon import REPO, free_ports
from tests.support.waiting import wait_until

TIMEOUT = 90


# --- real processes: helpers ------------------------------------------------------------------

def fake_torchd() -> subprocess.Popen:
    """A sleeping process whose command line says torchd (argv[0]), as the real one's does.
    Returned once /proc shows that command line: Popen returns when exec has begun, and the
    kernel sets the new command line up a moment later. Read meanwhile (23 spawns in 1000
    here) it is empty, and made `stop` take the process for a stale pid file in a CI run."""
    process = subprocess.Popen(["torchd", "-c", "import time; time.sleep(60)"],
                               executable=sys.executable)
    try:
        wait_until(lambda: pidfile.is_torchd_process(process.pid), timeout=30,
                   what="the fake torchd's command line")
    except BaseException:
        reap(process)
        raise
    return process


def not_torchd() -> subprocess.Popen:
    """A process that is not torchd and echoes each line it reads: an answer proves it got no
    signal before the question (a pending fatal one kills it before it can run again)."""
    return subprocess.Popen([sys.executable, "-c",
                             "import sys\nfor line in sys.stdin: print(line, end='', flush=True)"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def echoes(process: subprocess.Popen, line: str = "still there\n") -> bool:
    process.stdin.write(line)
    process.stdin.flush()
    return process.stdout.readline() == line


def reap(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            pipe.close()


def cli_env(env: dict | None = None) -> dict[str, str]:
    full_env = {key: value for key, value in os.environ.items()
                if not key.startswith("TS_") and key not in ("LOG_LOCATION", "NOTIFY_SOCKET")}
    full_env.update(env or {})
    # this checkout's code, whatever the cwd: an installed torchd may be another checkout's
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO),
                                                           full_env.get("PYTHONPATH")]))
    return full_env


def run_cli(args: list[str], cwd: Path, env: dict | None = None,
            timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemon.ops.cli", *args], cwd=cwd,
                          env=cli_env(env), capture_output=True, text=True, timeout=timeout,
                          check=False)


def kill_pid_file_owner(path: Path) -> None:
    pid = pidfile.read_pid(path)
    if pid is not None and pidfile.is_torchd_process(pid):
        os.kill(pid, signal.SIGKILL)


# --- status / stop / start against pid files --------------------------------------------------

def test_status_stop_and_start_with_a_live_torchd(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # where started daemons are listed: none of this machine's, for the last "not running"
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    process = fake_torchd()
    try:
        pid_path = tmp_path / "logs" / "torchd.pid"
        pidfile.write_pid(pid_path, process.pid)
        assert cli.main(["status"]) == 0
        assert f"torchd is running (pid {process.pid}" in capsys.readouterr().out

        assert cli.main(["start", "--ncs"]) == 1
        err = capsys.readouterr().err
        assert f"already running (pid {process.pid}" in err
        assert not (tmp_path / "logs" / "ts_log.log").exists()  # nothing was spawned

        assert cli.main(["stop"]) == 0
        assert "torchd stopped" in capsys.readouterr().out
        assert process.wait(timeout=10) == -signal.SIGTERM
        assert not pid_path.exists()
        assert cli.main(["status"]) == 1
    finally:
        reap(process)


def test_stale_pid_file_of_a_dead_process(tmp_path, capsys):
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(timeout=30)
    pid_path = tmp_path / "t.pid"
    pidfile.write_pid(pid_path, process.pid)
    assert cli.main(["status", "--pid-file", str(pid_path)]) == 1
    assert "stale pid file" in capsys.readouterr().out
    assert cli.main(["--stop", "--pid-file", str(pid_path)]) == 0
    assert "not running" in capsys.readouterr().out
    assert not pid_path.exists()


def test_stop_never_signals_a_process_that_is_not_torchd(tmp_path, capsys):
    process = not_torchd()  # the pid was reused by something else
    try:
        pid_path = tmp_path / "t.pid"
        pidfile.write_pid(pid_path, process.pid)
        assert cli.main(["status", "--pid-file", str(pid_path)]) == 1
        assert cli.main(["stop", "--pid-file", str(pid_path)]) == 0
        assert "stale pid file" in capsys.readouterr().out
        assert echoes(process)   # any signal was sent before stop returned
    finally:
        reap(process)


def test_stop_reports_a_daemon_that_does_not_exit(tmp_path, capsys):
    code = ("import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ignoring SIGTERM', flush=True); signal.pause()")
    process = subprocess.Popen(["torchd", "-c", code], executable=sys.executable,
                               stdout=subprocess.PIPE, text=True)
    try:
        pid_path = tmp_path / "t.pid"
        pidfile.write_pid(pid_path, process.pid)
        assert process.stdout.readline() == "ignoring SIGTERM\n"   # the handler is in place
        assert cli.main(["stop", "--pid-file", str(pid_path), "--wait", "0.5"]) == 1
        assert "still running after 0.5 s" in capsys.readouterr().err
        assert pid_path.exists()
    finally:
        reap(process)


def test_stop_works_with_a_broken_config_when_given_the_pid_file(tmp_path, capsys,
                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.properties").write_text("max_workers=lots\n")
    process = fake_torchd()
    try:
        pidfile.write_pid(tmp_path / "t.pid", process.pid)
        assert cli.main(["stop", "--pid-file", "t.pid"]) == 0
        assert "max_workers" in capsys.readouterr().err
        assert process.wait(timeout=10) == -signal.SIGTERM
    finally:
        reap(process)


def test_serve_rejects_an_invalid_setting_naming_it(tmp_path):
    result = run_cli(["serve", "--max-workers", "lots"], tmp_path)
    assert result.returncode == 2
    assert "invalid value for max_workers: 'lots' (command line)" in result.stderr
    env_result = run_cli(["serve"], tmp_path, {"TS_JOB_QUEUE_SIZE": "0"})
    assert env_result.returncode == 2
    assert "job_queue_size" in env_result.stderr and "TS_JOB_QUEUE_SIZE" in env_result.stderr


def test_serve_refuses_while_another_torchd_holds_the_pid_file(tmp_path):
    process = fake_torchd()
    try:
        pidfile.write_pid(tmp_path / "logs" / "torchd.pid", process.pid)
        result = run_cli(["serve"], tmp_path)
        assert result.returncode == 1
        assert f"already running (pid {process.pid}" in result.stderr
    finally:
        reap(process)


@pytest.mark.parametrize("command, what", [
    ("serve", "the pid file /proc/torchd-logs/torchd.pid (pid_file, log_location)"),
    ("start", "its log /proc/torchd-logs/ts_log.log (log_location)")])
def test_a_log_location_that_cannot_be_written_is_named_without_a_traceback(tmp_path, command,
                                                                            what):
    """/proc takes no directory of ours, root or not."""
    result = run_cli([command, "--log-location", "/proc/torchd-logs"], tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"torchd: cannot start: cannot write {what}: [Errno 2]")
    assert "Traceback" not in result.stderr


# --- start / stop with a stand-in server ------------------------------------------------------
# daemon.ops.server is built separately; this stand-in (injected through sitecustomize) listens on
# the management address until SIGTERM, so start's spawning, waiting and pid-file handshake are
# tested on their own. The test after it runs the real server.

STAND_IN = textwrap.dedent("""
    import os, signal, socket, sys, threading, types

    def run(config):
        if os.environ.get("STAND_IN_FAIL"):
            print("stand-in: failing on purpose", flush=True)
            return 3
        address = config.management_address
        server = socket.create_server((address.host, address.port))
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        print("stand-in: listening", flush=True)
        while not stopped.wait(0.05):
            pass
        server.close()
        print("stand-in: stopped", flush=True)
        return 0

    module = types.ModuleType("daemon.ops.server")
    module.run = run
    sys.modules["daemon.ops.server"] = module
""")


@pytest.fixture
def stand_in(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(STAND_IN)
    return {"PYTHONPATH": str(site)}


def write_properties(tmp_path: Path) -> list[int]:
    ports = free_ports(3)
    (tmp_path / "config.properties").write_text(
        f"inference_address=http://127.0.0.1:{ports[0]}\n"
        f"management_address=http://127.0.0.1:{ports[1]}\n"
        f"metrics_address=http://127.0.0.1:{ports[2]}\n"
        f"log_location={tmp_path / 'logs'}\n")
    (tmp_path / "store").mkdir()
    return ports


def test_start_status_stop_with_a_stand_in_server(tmp_path, stand_in):
    write_properties(tmp_path)
    pid_path = tmp_path / "logs" / "torchd.pid"
    try:
        started = run_cli(["start", "--model-store", "store", "--ncs"], tmp_path, stand_in)
        assert started.returncode == 0, started.stderr
        pid = pidfile.read_pid(pid_path)
        assert f"Model server started: torchd pid {pid}," in started.stdout
        # start's captured output is neither PID 1's nor a file: the log is not copied there,
        # or this capture would have waited for the server to stop
        assert "stand-in: listening" not in started.stdout
        assert psutil.Process(pid).ppid() != os.getpid()  # detached from its starter

        status = run_cli(["status"], tmp_path, stand_in)
        assert status.returncode == 0 and f"running (pid {pid}" in status.stdout

        again = run_cli(["--start", "--model-store", "store"], tmp_path, stand_in)
        assert again.returncode == 1 and "already running" in again.stderr

        stopped = run_cli(["stop"], tmp_path, stand_in)
        assert stopped.returncode == 0 and "torchd stopped" in stopped.stdout
        assert pid_gone(pid) and not pid_path.exists()
        log = (tmp_path / "logs" / "ts_log.log").read_text()
        assert "stand-in: listening" in log and "stand-in: stopped" in log
        assert run_cli(["status"], tmp_path, stand_in).returncode == 1
    finally:
        kill_pid_file_owner(pid_path)


class PipeReader:
    """What a pipe has received so far, read without blocking; ``ended`` once every writer
    has closed it."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd, self.received, self.ended = fd, b"", False

    def text(self) -> str:
        while not self.ended:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            self.received += chunk
            self.ended = not chunk
        return self.received.decode(errors="replace")


CONTAINER = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]


def pid_namespaces_allowed() -> bool:
    try:
        return subprocess.run([*CONTAINER, "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not pid_namespaces_allowed(),
                    reason="needs unshare(1) and the right to make a PID namespace (root)")
def test_start_in_a_container_copies_its_log_to_the_containers_output(tmp_path, stand_in):
    """As TorchServe's image runs it: the entrypoint, PID 1, runs `torchserve --start` and
    waits, and `docker logs` shows PID 1's output. A PID namespace makes the shell PID 1."""
    write_properties(tmp_path)
    torchd = f"{sys.executable} -m daemon.ops.cli"
    entrypoint = f"{torchd} --start --model-store store --ncs && read go && {torchd} --stop"
    read_end, write_end = os.pipe()
    try:
        container = subprocess.Popen([*CONTAINER, "sh", "-c", entrypoint],
                                     cwd=tmp_path, env=cli_env(stand_in), stdin=subprocess.PIPE,
                                     stdout=write_end, stderr=write_end)
    finally:
        os.close(write_end)
    output = PipeReader(read_end)
    try:
        # start's own line and the copied one, in either order: they are written concurrently
        wait_until(lambda: ("stand-in: listening" in output.text()
                            and "Model server started: torchd pid " in output.text())
                   or container.poll() is not None,
                   timeout=60, what="the daemon's log line in the container's output")
        assert container.poll() is None, output.text()
        container.stdin.write(b"stop\n")
        container.stdin.flush()
        assert container.wait(60) == 0, output.text()
        wait_until(lambda: output.text() and output.ended, timeout=30,
                   what="every writer of the container's output gone")
        assert "stand-in: stopped" in output.text()   # copied to the last line
        assert "torchd stopped" in output.text()
    finally:
        reap(container)      # --kill-child: the namespace's processes go with it
        os.close(read_end)


def start_in(directory: Path, stand_in: dict) -> int:
    """A stand-in started in ``directory``, whose pid file has the default place (./logs)."""
    directory.mkdir()
    ports = free_ports(3)
    (directory / "config.properties").write_text("".join(
        f"{name}_address=http://127.0.0.1:{port}\n"
        for name, port in zip(("inference", "management", "metrics"), ports)))
    (directory / "store").mkdir()
    started = run_cli(["start", "--model-store", "store", "--ncs"], directory, stand_in)
    assert started.returncode == 0, started.stderr
    pid = pidfile.read_pid(directory / "logs" / "torchd.pid")
    assert pid is not None
    return pid


@pytest.fixture
def own_tmpdir(tmp_path, stand_in) -> dict:
    """The stand-in's environment with a $TMPDIR of the test's own, where the started daemons
    are listed: no other daemon started on this machine is among them."""
    (tmp_path / "tmp").mkdir()
    return {**stand_in, "TMPDIR": str(tmp_path / "tmp")}


def test_stop_from_another_directory_finds_the_one_daemon_start_started(tmp_path, own_tmpdir):
    """As TorchServe's --stop, whose pid file is in $TMPDIR, finds its server from anywhere."""
    stand_in = own_tmpdir
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    elsewhere.mkdir()
    try:
        pid = start_in(here, stand_in)
        pid_path = here / "logs" / "torchd.pid"
        status = run_cli(["status"], elsewhere, stand_in)
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"the one torchd start started is pid {pid}, pid file {pid_path}" in status.stdout
        assert f"torchd is running (pid {pid}, pid file {pid_path})" in status.stdout
        assert "management:" not in status.stdout   # this directory's addresses are not its
        # a place chosen for the pid file is where it is looked for, and nowhere else
        chosen = run_cli(["--stop", "--log-location", str(elsewhere / "logs")], elsewhere,
                         stand_in)
        assert chosen.returncode == 0 and "torchd is not running" in chosen.stdout
        assert not pid_gone(pid)

        stopped = run_cli(["--stop"], elsewhere, stand_in)
        assert stopped.returncode == 0, stopped.stderr
        assert "torchd stopped" in stopped.stdout and pid_gone(pid)
        assert not pid_path.exists()
        registry = tmp_path / "tmp" / f"torchd-started-{os.getuid()}"
        assert registry.is_dir() and not any(registry.iterdir())   # it took itself off
    finally:
        kill_pid_file_owner(here / "logs" / "torchd.pid")


def test_stop_from_another_directory_names_several_and_stops_none(tmp_path, own_tmpdir):
    stand_in = own_tmpdir
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    try:
        pids = [start_in(tmp_path / name, stand_in) for name in ("a", "b")]
        stopped = run_cli(["--stop"], elsewhere, stand_in)
        assert stopped.returncode == 0 and "torchd is not running" in stopped.stdout
        for pid, name in zip(pids, ("a", "b")):
            path = tmp_path / name / "logs" / "torchd.pid"
            assert f"torchd start started pid {pid}, pid file {path}: name it with " \
                   f"--pid-file {path}" in stopped.stderr
            assert not pid_gone(pid)
    finally:
        for name in ("a", "b"):
            kill_pid_file_owner(tmp_path / name / "logs" / "torchd.pid")


def test_start_reports_a_daemon_that_dies(tmp_path, stand_in):
    write_properties(tmp_path)
    result = run_cli(["start"], tmp_path, {**stand_in, "STAND_IN_FAIL": "1"})
    assert result.returncode == 1
    assert "failed to start (exit code 3)" in result.stderr
    assert "stand-in: failing on purpose" in result.stderr  # the log's tail
    assert not (tmp_path / "logs" / "torchd.pid").exists()


def test_start_rejects_bad_config_before_spawning(tmp_path):
    result = run_cli(["start", "--management-address", "nowhere"], tmp_path)
    assert result.returncode == 2
    assert "management_address" in result.stderr
    assert not (tmp_path / "logs").exists()


# --- the real server --------------------------------------------------------------------------

def test_start_status_stop_real_server(tmp_path):
    pytest.importorskip("daemon.ops.server")
    ports = write_properties(tmp_path)
    pid_path = tmp_path / "logs" / "torchd.pid"
    try:
        started = run_cli(["start", "--model-store", "store", "--ncs"], tmp_path)
        assert started.returncode == 0, started.stderr + started.stdout
        pid = pidfile.read_pid(pid_path)
        assert pid is not None and pidfile.is_torchd_process(pid)
        assert cli.is_listening(load_config({}, {}, tmp_path).management_address)
        socket.create_connection(("127.0.0.1", ports[0]), timeout=5).close()

        status = run_cli(["status"], tmp_path)
        assert status.returncode == 0 and f"running (pid {pid}" in status.stdout

        again = run_cli(["start", "--model-store", "store", "--ncs"], tmp_path)
        assert again.returncode == 1 and "already running" in again.stderr

        stopped = run_cli(["stop"], tmp_path)
        assert stopped.returncode == 0, stopped.stderr
        assert pid_gone(pid)
        assert not pid_path.exists()
        assert run_cli(["status"], tmp_path).returncode == 1
    finally:
        kill_pid_file_owner(pid_path)


def test_the_list_of_started_daemons_is_this_users_alone_and_keeps_the_running(tmp_path):
    registry = tmp_path / "torchd-started"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)
    live = fake_torchd()
    try:
        pid_path = tmp_path / "logs" / "torchd.pid"
        pidfile.write_pid(pid_path, live.pid)
        assert pidfile.started_daemons(registry) == []      # made, empty
        assert registry.stat().st_mode & 0o777 == 0o700
        (registry / str(live.pid)).symlink_to(pid_path)
        (registry / str(gone.pid)).symlink_to(pid_path)     # killed: its pid file is another's
        (registry / str(os.getpid())).symlink_to(tmp_path / "none.pid")
        assert pidfile.started_daemons(registry) == [(live.pid, pid_path)]
        assert [entry.name for entry in registry.iterdir()] == [str(live.pid)]   # pruned
        registry.chmod(0o777)          # anyone could have put a link there
        assert pidfile.started_daemons(registry) == []
        registry.chmod(0o700)
        registry.rename(tmp_path / "real")
        registry.symlink_to(tmp_path / "real")              # a link in its place: not used
        assert pidfile.started_daemons(registry) == []
    finally:
        reap(live)
