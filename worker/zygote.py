"""The fork server: ``python -m worker.zygote --socket PATH --daemon-pid PID``.

It imports torch and the worker modules once, runs no torch op (so no thread pool exists when it
forks), and forks workers on SPAWN; they share the warm pages copy-on-write. It stays
single-threaded on purpose: forking a process with other threads running is unsafe. One selector
waits on the daemon socket, a SIGCHLD wakeup pipe and a pidfd of the daemon.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import selectors
import signal
import socket
import sys
import time
from typing import Any

import setproctitle

from protocol import messages
from protocol.frames import FrameDecoder, ProtocolError
from protocol.streams import send_frame
from worker import pipes
from worker.exits import EXIT_CONNECT_FAILED, EXIT_DAEMON_GONE, EXIT_FAILED, EXIT_OK, EXIT_PROTOCOL
from worker.logs import configure_logging
from worker.ts_alias import install_ts_alias
from worker.watch import POLL_SECONDS, lead_own_group, open_pidfd, process_alive

logger = logging.getLogger("worker.zygote" if __name__ == "__main__" else __name__)

TITLE = "torchd zygote"
# Signals whose zygote disposition a worker must not inherit.
RESET_SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


# Imported before any fork, so every worker starts with them warm. Importing torch runs no torch
# op, so no intra-op thread pool exists yet when the zygote forks.
WARM_MODULES = (
    "torch",
    "worker.process",
    "worker.service",
    "worker.template",
    "worker.runtime.context",
    "worker.runtime.recorder",
    "worker.runtime.streaming",
    "worker.ts.context",
    "worker.ts.handler_utils.utils",
    "worker.ts.metrics.recorder",
    "worker.ts.torch_handler.base_handler",
    "worker.ts.utils.util",
)


# torch's compiler, imported on the first SPAWN of a model that compiles (model-config.yaml
# pt2): 5-10 s of imports that its later workers (scale-ups, restarts) then do not pay. Importing
# them runs no torch op and starts no thread, so the zygote stays safe to fork from.
COMPILER_MODULES = ("torch._dynamo", "torch._inductor.compile_fx")


def import_compiler() -> None:
    missing = [name for name in COMPILER_MODULES if name not in sys.modules]
    if not missing:
        return
    started = time.monotonic()
    for name in missing:
        try:
            importlib.import_module(name)
        except Exception as exc:   # the worker's own import will say it, where it matters
            logger.warning("zygote could not import %s: %s", name, exc)
            return
    gc.freeze()   # as warm_up: these objects now live in every child
    logger.info("torch's compiler imported in %.2f s, for the models that compile",
                time.monotonic() - started)


def warm_up() -> float:
    """Import everything a worker needs before it forks; returns the seconds it took."""
    started = time.monotonic()
    for name in WARM_MODULES:
        importlib.import_module(name)
    threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1
    if threads > 1:
        # e.g. numpy's OpenBLAS server thread: such libraries must be fork-safe (OpenBLAS is,
        # through pthread_atfork); only the forking thread exists in a child.
        logger.info("%d native threads exist in the zygote before any fork", threads)
    # Objects that exist now live in every child: keep the collector from touching (and so
    # copying) their pages.
    gc.freeze()
    return time.monotonic() - started


class Zygote:
    """Serves SPAWN requests on ``sock`` and reports each child's exit."""

    def __init__(self, sock: socket.socket, daemon_pid: int) -> None:
        self.sock = sock
        self.daemon_pid = daemon_pid
        self.decoder = FrameDecoder()
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        self.pidfd: int | None = None

    def serve(self) -> int:
        """Run until EOF or the daemon's death; the exit code."""
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self.selector.register(self.sock, selectors.EVENT_READ, "daemon")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "sigchld")
        if self.daemon_pid > 0:
            try:
                self.pidfd = open_pidfd(self.daemon_pid)
            except ProcessLookupError:
                return EXIT_DAEMON_GONE
            if self.pidfd is not None:
                self.selector.register(self.pidfd, selectors.EVENT_READ, "daemon-pid")
        while True:
            code = self._step()
            if code is not None:
                return code

    def _step(self) -> int | None:
        polling = self.pidfd is None and self.daemon_pid > 0
        for key, _ in self.selector.select(POLL_SECONDS if polling else None):
            if key.data == "daemon-pid":
                return EXIT_DAEMON_GONE
            if key.data == "sigchld":
                pipes.drain(self.wake_r)
                self._reap()
            elif key.data == "daemon":
                code = self._read_daemon()
                if code is not None:
                    return code
        if polling and not process_alive(self.daemon_pid):
            return EXIT_DAEMON_GONE
        return None

    def _read_daemon(self) -> int | None:
        try:
            data = self.sock.recv(65536)
        except OSError as exc:
            logger.info("daemon socket failed: %s", exc)
            return EXIT_OK
        if not data:
            return EXIT_OK
        try:
            frames = self.decoder.feed(data)
        except ProtocolError as exc:
            logger.error("bad frame from the daemon: %s", exc)
            return EXIT_PROTOCOL
        for message in frames:
            if message.get("kind") == messages.SPAWN:
                self._spawn(message)
            else:
                logger.warning("zygote ignores %r frames", message.get("kind"))
        return None

    def _spawn(self, message: dict[str, Any]) -> None:
        worker_id = str(message.get("worker_id"))
        what = "worker" if message.get("preload") is None else "template"
        if message.get("compiler"):
            import_compiler()
        try:
            pid = os.fork()
        except OSError as exc:
            logger.error("fork for %s %s failed: %s", what, worker_id, exc)
            self._send(messages.spawned(worker_id, None, f"{type(exc).__name__}: {exc}"))
            return
        if pid == 0:
            self._become_worker(message)  # never returns
        logger.info("forked %s %s as pid %d", what, worker_id, pid)
        self._send(messages.spawned(worker_id, pid))

    def _become_worker(self, message: dict[str, Any]) -> None:
        """In the child: drop everything that belongs to the zygote, then serve as a worker
        (or, for a SPAWN with ``preload``, as a template: worker/template.py)."""
        try:
            lead_own_group()
            signal.set_wakeup_fd(-1)
            for signum in RESET_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self.selector.close()
            self.sock.close()
            for fd in (self.wake_r, self.wake_w, self.pidfd):
                if fd is not None:
                    os.close(fd)
            worker_id = str(message["worker_id"])
            title = message.get("title") or f"torchd worker {worker_id}"
            daemon_pid = int(message["daemon_pid"])
            if message.get("preload") is not None:   # a model version's template
                from worker.template import run_template
                run_template(message["socket_path"], worker_id, title, message["preload"],
                             lambda sock: type(self)(sock, daemon_pid).serve())
            from worker.process import run_worker
            run_worker(message["socket_path"], worker_id, daemon_pid, title)
        finally:
            os._exit(EXIT_FAILED)  # only reached if becoming a worker failed before run_worker

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            logger.info("worker pid %d exited with %d", pid, code)
            self._send(messages.exited(pid, code))

    def _send(self, message: dict[str, Any]) -> None:
        try:
            send_frame(self.sock, message)
        except OSError as exc:
            logger.warning("cannot tell the daemon (%s): %s", message.get("kind"), exc)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker.zygote",
                                     description="torchd worker fork server")
    parser.add_argument("--socket", required=True, help="Unix socket the daemon listens on")
    parser.add_argument("--daemon-pid", type=int, required=True,
                        help="exit when this process dies (<= 0: never)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setproctitle.setproctitle(TITLE)
    configure_logging(prefix="[zygote] ")
    install_ts_alias()
    seconds = warm_up()
    logger.info("zygote warm in %.2f s", seconds)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(args.socket)
        send_frame(sock, messages.hello(os.getpid(), "zygote"))
    except OSError as exc:
        logger.error("cannot connect to %s: %s", args.socket, exc)
        os._exit(EXIT_CONNECT_FAILED)
    code = Zygote(sock, args.daemon_pid).serve()
    logger.info("zygote exiting with code %d", code)
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    main()
