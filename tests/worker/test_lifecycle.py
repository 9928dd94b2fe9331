"""Heartbeats, shutdown, EOF, the daemon's death, the zygote, process titles."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from protocol import messages
from tests.support.daemon import REPO
from tests.support.waiting import wait_until
from tests.worker.harness import WorkerHandle, gone, json_request, wait_gone
from worker.exits import EXIT_CONNECT_FAILED, EXIT_DAEMON_GONE, EXIT_OK, EXIT_PROTOCOL


@pytest.fixture
def fake_daemon_pid():
    """A helper process whose pid plays the daemon's; kill it to 'kill the daemon'."""
    helper = subprocess.Popen(["sleep", "600"])
    yield helper
    helper.kill()
    helper.wait(5)


def kill_helper(helper: subprocess.Popen) -> float:
    helper.send_signal(signal.SIGKILL)
    helper.wait(5)
    return time.monotonic()


def running(worker: WorkerHandle, log: Path, seconds: float) -> int:
    """Send a batch to a worker of the recorder model that runs ``seconds``; its id, once its
    handler runs (the recorder logs each request as it begins)."""
    body = json.dumps({"log": str(log), "tag": "running", "sleep": seconds}).encode()
    batch = worker.send_batch([messages.request("r", [], [messages.parameter("body", None,
                                                                             body)])])
    wait_until(lambda: log.exists() and "running" in log.read_text(), 30,
               what="the batch in its handler")
    return batch


def test_ping_answered_while_a_batch_runs(loaded, tmp_path):
    worker = loaded("recorder")
    batch = running(worker, tmp_path / "ran.log", 2)
    sent = time.monotonic()
    worker.peer.send(messages.ping(7))
    assert worker.peer.expect(messages.PONG, timeout=1) == messages.pong(7)
    assert time.monotonic() - sent < 1
    _, result = worker.collect(batch)
    assert result["responses"][0]["status"] == 200


def test_shutdown_exits_zero(loaded):
    worker = loaded("noop", mode="exec")
    worker.peer.send(messages.shutdown())
    assert worker.process.wait(10) == EXIT_OK


@pytest.mark.parametrize("busy", [False, True])
def test_socket_eof_ends_the_worker(loaded, busy, tmp_path):
    worker = loaded("recorder", mode="exec")
    if busy:
        running(worker, tmp_path / "ran.log", 30)
    worker.peer.sock.shutdown(socket.SHUT_RDWR)
    assert worker.process.wait(4) == EXIT_OK


def test_garbage_frame_is_a_protocol_error(loaded):
    worker = loaded("noop", mode="exec")
    worker.peer.sock.sendall(b"\x00\x00\x00\x03abc")
    assert worker.process.wait(5) == EXIT_PROTOCOL


def test_first_frame_must_be_load(spawn):
    worker = spawn("exec")
    worker.peer.send(messages.predict(1, [json_request("r", {})]))
    assert worker.process.wait(5) == EXIT_PROTOCOL


@pytest.mark.parametrize("mode", ["exec", "zygote"])
@pytest.mark.parametrize("busy", [False, True])
def test_worker_exits_when_the_daemon_dies(spawn, store, fake_daemon_pid, mode, busy,
                                           tmp_path):
    worker = spawn(mode, daemon_pid=fake_daemon_pid.pid)
    assert worker.load(store.model_dir("recorder"))["ok"]
    if busy:
        running(worker, tmp_path / "ran.log", 60)
    killed = kill_helper(fake_daemon_pid)
    assert wait_gone(worker.pid, 3), "worker outlived its daemon"
    assert time.monotonic() - killed < 3
    if worker.process is not None:
        assert worker.process.wait(1) == EXIT_DAEMON_GONE


def test_zygote_exits_when_the_daemon_dies(daemon, fake_daemon_pid):
    zygote = daemon.start_zygote(daemon_pid=fake_daemon_pid.pid)
    kill_helper(fake_daemon_pid)
    assert zygote.process.wait(3) == EXIT_DAEMON_GONE


def test_zygote_exits_on_eof(daemon):
    zygote = daemon.start_zygote()
    zygote.peer.close()
    assert zygote.process.wait(5) == EXIT_OK


def test_workers_outlive_a_killed_zygote(daemon, store):
    zygote = daemon.start_zygote()
    workers = [zygote.spawn(worker_id) for worker_id in ("8001", "8002")]
    for worker in workers:
        assert worker.load(store.model_dir("noop"))["ok"]
        assert psutil.Process(worker.pid).ppid() == zygote.pid
    zygote.process.send_signal(signal.SIGKILL)
    assert zygote.process.wait(5) == -signal.SIGKILL
    for worker in workers:
        _, result = worker.predict([json_request("r", {})])
        assert result["responses"][0]["status"] == 200
        assert not gone(worker.pid)


def test_zygote_reports_worker_exits(zygote, spawn, store):
    stopped, killed = spawn(), spawn()
    assert stopped.load(store.model_dir("noop"))["ok"]
    assert stopped.shutdown()
    assert zygote.wait_exit(stopped.pid, 5) == messages.exited(stopped.pid, EXIT_OK)
    killed.kill()
    assert zygote.wait_exit(killed.pid, 5) == messages.exited(killed.pid, -signal.SIGKILL)


def test_zygote_spawn_failure_is_reported(zygote, session_daemon):
    # A socket nobody listens on: the fork succeeds, the child fails to connect.
    zygote.peer.send(messages.spawn("8100", str(session_daemon.dir / "nobody.sock"),
                                    "torchd worker x", 0))
    spawned = zygote.next_non_exit(messages.SPAWNED)
    assert spawned["error"] is None and spawned["worker_id"] == "8100"
    assert zygote.wait_exit(spawned["pid"], 10)["returncode"] == EXIT_CONNECT_FAILED


def test_a_worker_whose_socket_is_gone_says_why_without_an_error(tmp_path):
    # the daemon removes a worker's socket as it stops it: one stopped while being forked
    gone_socket = tmp_path / "w1.sock"
    done = subprocess.run([sys.executable, "-m", "worker", "--socket", str(gone_socket),
                           "--worker-id", "8200", "--daemon-pid", "0"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_CONNECT_FAILED
    assert (f"WARNING worker.process: no daemon at {gone_socket} (No such file or directory): "
            "this worker was stopped before it connected, or the daemon has exited"
            in done.stderr), done.stderr
    assert "ERROR" not in done.stderr


@pytest.mark.parametrize("mode", ["exec", "zygote"])
def test_process_titles(spawn, zygote, mode):
    title = f"torchd worker noop 1.0 {mode}-title"
    worker = spawn(mode, title=title)
    assert " ".join(psutil.Process(worker.pid).cmdline()).strip() == title
    assert " ".join(psutil.Process(zygote.pid).cmdline()).strip() == "torchd zygote"
