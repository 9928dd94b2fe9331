"""A test-side stand-in for the daemon: listens on Unix sockets, starts real workers (exec or
through a real zygote), speaks the frame protocol, and kills every process it started."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from daemon.models.extraction import extract_archive
from daemon.osutil import pid_gone as gone
from protocol import messages
from protocol.streams import send_frame
from tests.support.frames import FrameReader
from tests.support.waiting import wait_until

PYTHON = sys.executable
TIMEOUT = 60.0


def short_dir() -> Path:
    """A directory with a short path: Unix socket paths are limited to ~107 bytes."""
    return Path(tempfile.mkdtemp(prefix="tdw-", dir="/tmp"))


def model_dir_of(archive: Path, extract_root: Path) -> Path:
    """The directory the daemon would hand a worker for ``archive``: extracted under
    ``extract_root`` by the daemon's own code, or a no-archive directory as it is."""
    return archive if archive.is_dir() else extract_archive(archive, extract_root)


def manifest_of(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())


def json_request(request_id: str, body: Any, headers: list[list[str]] | None = None,
                 ) -> dict[str, Any]:
    value = json.dumps(body).encode()
    return messages.request(request_id, [["content-type", "application/json"], *(headers or [])],
                            [messages.parameter("body", "application/json", value)])


def wait_gone(pid: int, timeout: float) -> bool:
    """True once ``pid`` has exited, False if it still runs after ``timeout`` seconds."""
    try:
        return wait_until(lambda: gone(pid), timeout, what=f"pid {pid} gone")
    except TimeoutError:
        return False


def track(pid: int) -> psutil.Process | None:
    """A handle that remembers the process's start time, so a reused pid is never killed."""
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def kill_process(process: psutil.Process | None) -> None:
    if process is None:
        return
    try:
        if process.is_running():
            process.send_signal(signal.SIGKILL)
    except psutil.NoSuchProcess:
        return
    wait_gone(process.pid, 5)


class Peer:
    """The daemon's end of one connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.frames = FrameReader(sock)

    def send(self, message: dict[str, Any]) -> None:
        send_frame(self.sock, message)

    def recv(self, timeout: float = TIMEOUT) -> dict[str, Any] | None:
        self.sock.settimeout(timeout)
        return self.frames.next()

    def expect(self, kind: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        message = self.recv(timeout)
        assert message is not None, f"EOF while waiting for {kind}"
        assert message["kind"] == kind, message
        return message

    def close(self) -> None:
        self.sock.close()


class Listener:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)

    def accept(self, timeout: float = TIMEOUT) -> Peer:
        self.sock.settimeout(timeout)
        conn, _ = self.sock.accept()
        conn.settimeout(None)
        return Peer(conn)

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


class WorkerHandle:
    """One running worker, greeted; helpers for each message exchange."""

    def __init__(self, peer: Peer, pid: int, worker_id: str,
                 process: subprocess.Popen | None = None) -> None:
        self.peer = peer
        self.pid = pid
        self.worker_id = worker_id
        self.process = process
        self._batch = 0

    def load(self, model_dir: Path, handler: str | None = None, batch_size: int = 1,
             model_name: str | None = None, yaml_config: dict | None = None,
             timeout: float = TIMEOUT, serving: str = messages.MODE_BATCH,
             **extra: Any) -> dict[str, Any]:
        """LOAD the model in ``model_dir``; ``serving``: LOAD's mode (the name ``mode`` is the
        fixtures' way of starting a worker); ``extra`` adds fields to the LOAD frame."""
        manifest = manifest_of(model_dir)
        model = manifest["model"]
        load = messages.load(str(model_dir), model_name or model["modelName"],
                             handler or model["handler"], manifest, batch_size,
                             yaml_config or {}, "0.1.0-test", mode=serving)
        self.peer.send({**load, **extra})
        return self.peer.expect(messages.LOADED, timeout)

    def predict(self, requests: list[dict[str, Any]], timeout: float = TIMEOUT,
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Send one batch; (stream parts in arrival order, the RESULT)."""
        batch_id = self.send_batch(requests)
        return self.collect(batch_id, timeout)

    def send_batch(self, requests: list[dict[str, Any]]) -> int:
        self._batch += 1
        self.peer.send(messages.predict(self._batch, requests))
        return self._batch

    def collect(self, batch_id: int, timeout: float = TIMEOUT,
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        parts = []
        while True:
            message = self.peer.recv(timeout)
            assert message is not None, "worker hung up during a batch"
            assert message.get("batch_id") == batch_id, message
            if message["kind"] == messages.STREAM:
                parts.append(message["response"])
            else:
                assert message["kind"] == messages.RESULT, message
                return parts, message

    def describe(self) -> dict[str, Any]:
        self.peer.send(messages.describe())
        return self.peer.expect(messages.DESCRIBED)

    def shutdown(self, timeout: float = 10) -> bool:
        try:
            self.peer.send(messages.shutdown())
        except OSError:
            pass
        return wait_gone(self.pid, timeout)

    def kill(self) -> None:
        kill_process(track(self.pid))
        if self.process is not None:
            self.process.wait(5)
        self.peer.close()


class ZygoteHandle:
    def __init__(self, daemon: FakeDaemon, peer: Peer, pid: int,
                 process: subprocess.Popen) -> None:
        self.daemon = daemon
        self.peer = peer
        self.pid = pid
        self.process = process
        self.exits: list[dict[str, Any]] = []  # EXITED frames seen while waiting for others

    def spawn(self, worker_id: str, title: str | None = None,
              daemon_pid: int | None = None) -> WorkerHandle:
        listener = self.daemon.listener(worker_id)
        self.peer.send(messages.spawn(worker_id, str(listener.path),
                                      title or f"torchd worker test 1.0 {worker_id}",
                                      daemon_pid or os.getpid()))
        spawned = self.next_non_exit(messages.SPAWNED)
        assert spawned["error"] is None, spawned
        self.daemon.tracked.append(track(spawned["pid"]))
        return self.daemon.greet(listener, worker_id, spawned["pid"])

    def next_non_exit(self, kind: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        while True:
            message = self.peer.recv(timeout)
            assert message is not None, f"zygote hung up while waiting for {kind}"
            if message["kind"] == messages.EXITED:
                self.exits.append(message)
                continue
            assert message["kind"] == kind, message
            return message

    def wait_exit(self, pid: int, timeout: float = TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for message in self.exits:
                if message["pid"] == pid:
                    return message
            message = self.peer.recv(max(0.1, deadline - time.monotonic()))
            assert message is not None, "zygote hung up"
            assert message["kind"] == messages.EXITED, message
            self.exits.append(message)


class FakeDaemon:
    """Starts workers and zygotes on short-path sockets; ``close()`` kills all it started."""

    def __init__(self, log_path: Path | None = None) -> None:
        self.dir = short_dir()
        self.log_path = log_path or self.dir / "stderr.log"
        self.tracked: list[psutil.Process | None] = []
        self.processes: list[subprocess.Popen] = []
        self._listeners: list[Listener] = []

    def listener(self, name: str) -> Listener:
        listener = Listener(self.dir / f"{name}.sock")
        self._listeners.append(listener)
        return listener

    def _popen(self, args: list[str]) -> subprocess.Popen:
        with open(self.log_path, "ab") as log:
            process = subprocess.Popen([PYTHON, *args], stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=log)
        self.processes.append(process)
        self.tracked.append(track(process.pid))
        return process

    def greet(self, listener: Listener, worker_id: str, pid: int,
              process: subprocess.Popen | None = None) -> WorkerHandle:
        peer = listener.accept()
        hello = peer.expect(messages.HELLO)
        assert hello["worker_id"] == worker_id and hello["pid"] == pid, hello
        return WorkerHandle(peer, pid, worker_id, process)

    def spawn_exec(self, worker_id: str, title: str | None = None,
                   daemon_pid: int | None = None) -> WorkerHandle:
        listener = self.listener(worker_id)
        process = self._popen(["-m", "worker", "--socket", str(listener.path),
                               "--worker-id", worker_id,
                               "--daemon-pid", str(daemon_pid or os.getpid()),
                               "--title", title or f"torchd worker test 1.0 {worker_id}"])
        return self.greet(listener, worker_id, process.pid, process)

    def start_zygote(self, daemon_pid: int | None = None) -> ZygoteHandle:
        listener = self.listener("zygote")
        process = self._popen(["-m", "worker.zygote", "--socket", str(listener.path),
                               "--daemon-pid", str(daemon_pid or os.getpid())])
        peer = listener.accept()
        hello = peer.expect(messages.HELLO)
        assert hello == messages.hello(process.pid, "zygote"), hello
        return ZygoteHandle(self, peer, process.pid, process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        for process in reversed(self.tracked):
            kill_process(process)
        for process in self.processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                pass
        for listener in self._listeners:
            listener.close()
        shutil.rmtree(self.dir, ignore_errors=True)
