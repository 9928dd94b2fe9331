"""Turn the current process into a worker: title, output, daemon watch, connect, serve.

Shared by the exec entry point (``python -m worker``) and by the zygote's forked children.
"""
from __future__ import annotations

import logging
import os
import socket

import setproctitle

from protocol import messages
from worker.logs import PrefixedOutput, configure_logging
from worker.channel import Channel
from worker.exits import EXIT_CONNECT_FAILED, EXIT_DAEMON_GONE, EXIT_FAILED
from worker.loop import WorkerLoop
from worker.ts_alias import install_ts_alias
from worker.watch import end_own_group, lead_own_group, start_daemon_watch

logger = logging.getLogger(__name__)


class WorkerProcess:
    """One worker process's lifetime; ``run()`` returns the exit code."""

    def __init__(self, socket_path: str, worker_id: str, daemon_pid: int, title: str) -> None:
        self.socket_path = socket_path
        self.worker_id = worker_id
        self.daemon_pid = daemon_pid
        self.title = title
        self.output: PrefixedOutput | None = None

    def run(self) -> int:
        lead_own_group()
        setproctitle.setproctitle(self.title)
        prefix = f"[worker {self.worker_id}] "
        self.output = PrefixedOutput(prefix).start()
        configure_logging(prefix, stream=self.output.direct_stream())
        start_daemon_watch(self.daemon_pid, self._daemon_gone)
        install_ts_alias()
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self.socket_path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            # The daemon removes a worker's socket as it stops the worker (or itself stops):
            # a worker stopped while it was being forked finds none, and nothing is wrong.
            logger.warning("no daemon at %s (%s): this worker was stopped before it connected, "
                           "or the daemon has exited", self.socket_path, exc.strerror)
            return EXIT_CONNECT_FAILED
        except OSError as exc:
            logger.error("cannot connect to %s: %s", self.socket_path, exc)
            return EXIT_CONNECT_FAILED
        channel = Channel(sock, self.exit_now)
        try:
            channel.send(messages.hello(os.getpid(), self.worker_id))
        except OSError as exc:
            logger.error("cannot greet the daemon: %s", exc)
            return EXIT_CONNECT_FAILED
        channel.start_reader()
        logger.info("worker %s (pid %d) connected", self.worker_id, os.getpid())
        code = WorkerLoop(channel).run()
        logger.info("worker %s exiting with code %d", self.worker_id, code)
        return code

    def _daemon_gone(self) -> None:
        logger.error("daemon (pid %d) is gone; worker %s exiting", self.daemon_pid,
                     self.worker_id)
        self.exit_now(EXIT_DAEMON_GONE)

    def exit_now(self, code: int) -> None:
        """Leave at once, from any thread, after the buffered output is out, taking the
        processes the handler started along (the daemon ends the group too, but a daemon
        that died cannot, and then the socket's EOF may come first)."""
        self.close_output()
        end_own_group()
        os._exit(code)

    def close_output(self) -> None:
        if self.output is not None:
            self.output.close()


def run_worker(socket_path: str, worker_id: str, daemon_pid: int, title: str) -> None:
    """Run a worker to the end and exit the process (never returns)."""
    process = WorkerProcess(socket_path, worker_id, daemon_pid, title)
    code = EXIT_FAILED
    try:
        code = process.run()
    except BaseException:  # the last line of defence: log it, then still leave cleanly
        logger.exception("worker %s crashed", worker_id)
    finally:
        process.exit_now(code)
