"""A model version's template: a child of the zygote that runs the handler's ``initialize`` once,
then forks that version's workers, which share the loaded weights copy-on-write.

The zygote's rule holds here too: no torch thread pool and no thread but the main one may exist
when it forks (a child gets only the forking thread; a pool's locks and bookkeeping would be
copied mid-use). So torch's intra-op threads are set to 1 before the load (at::parallel_for
then runs inline: loading a state_dict starts no OpenMP pool), the inter-op pool is never
touched (each worker sizes both from its LOAD frame, after the fork), and a load that left a
thread running or CUDA initialized anyway is reported as unsafe: the daemon then has each worker
load the model itself. Once loaded it serves SPAWN requests exactly as the zygote does.
"""
from __future__ import annotations

import gc
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

import setproctitle

from protocol import messages
from protocol.streams import send_frame
from worker.exits import EXIT_CONNECT_FAILED, EXIT_FAILED, EXIT_OK
from worker.logs import configure_logging
from worker.service import ModelService, keep_preloaded
from worker.watch import end_own_group

logger = logging.getLogger(__name__)
# Serves SPAWN requests on the daemon's socket until it hangs up, forking a worker for each: the
# zygote's own loop (worker/zygote.py), handed in by the zygote; returns the exit code.
ForkServer = Callable[[socket.socket], int]


def native_threads() -> int:
    """Threads of this process, as the kernel counts them (native ones included)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def fork_hazard(threads_before: int) -> str | None:
    """Why forking workers from this process now would be unsafe; None when it is safe."""
    threads = native_threads()
    if threads > threads_before:
        return (f"the handler's initialize left {threads - threads_before} more thread(s) "
                f"running ({threads} in all), and a forked worker would get none of them")
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "the handler's initialize initialized CUDA, which a forked worker cannot use"
    return None


class TemplateProcess:
    """One template's life: load, check, then fork workers until the daemon hangs up."""

    def __init__(self, socket_path: str, template_id: str, title: str, load: dict[str, Any],
                 serve: ForkServer) -> None:
        self.socket_path = socket_path
        self.template_id = template_id
        self.title = title
        self.load = load
        self.serve = serve

    def run(self) -> int:
        setproctitle.setproctitle(self.title)
        configure_logging(prefix=f"[{self.title.removeprefix('torchd ')}] ")
        threads_before = native_threads()   # 1 in a fork child, whatever the zygote runs
        import torch
        torch.set_num_threads(1)            # never set_num_interop_threads: the workers do
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self.socket_path)
            send_frame(sock, messages.hello(os.getpid(), self.template_id))
        except OSError as exc:
            logger.error("cannot connect to %s: %s", self.socket_path, exc)
            return EXIT_CONNECT_FAILED
        started = time.monotonic()
        try:
            service = ModelService.load(self.load)
        except (Exception, SystemExit) as exc:
            logger.exception("loading model %s failed", self.load.get("model_name"))
            error = f"{type(exc).__name__}: {exc}"
            send_frame(sock, messages.preloaded(False, error, time.monotonic() - started))
            return EXIT_FAILED
        seconds = time.monotonic() - started
        hazard = fork_hazard(threads_before)
        if hazard is not None:
            send_frame(sock, messages.preloaded(True, None, seconds, unsafe=hazard))
            return EXIT_OK
        self._settle(service)
        logger.info("model %s loaded in %.3f s; forking its workers from pid %d",
                    self.load.get("model_name"), seconds, os.getpid())
        send_frame(sock, messages.preloaded(True, None, seconds))
        code = self.serve(sock)
        # The daemon stops a template after its workers: collect those that exited meanwhile,
        # or they would stay zombies, re-parented to a daemon that has already seen them go.
        reap_exited_children()
        return code

    def _settle(self, service: ModelService) -> None:
        """Make what the load left behind the workers' inheritance, once."""
        keep_preloaded(self.load, service)
        # Output the handler buffered would be written again by every worker.
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        # The loaded objects live in every worker: keep the collector from touching (and so
        # copying) their pages, as the zygote does for its imports.
        gc.collect()
        gc.freeze()


def reap_exited_children() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def run_template(socket_path: str, template_id: str, title: str, load: dict[str, Any],
                 serve: ForkServer) -> NoReturn:
    """Run a template to the end and exit the process (never returns)."""
    code = EXIT_FAILED
    try:
        code = TemplateProcess(socket_path, template_id, title, load, serve).run()
    except BaseException:   # the last line of defence: log it, then still leave
        logger.exception("template %s crashed", template_id)
    finally:
        logger.info("template %s exiting with code %d", template_id, code)
        logging.shutdown()
        end_own_group()   # what its initialize started (its workers lead groups of their own)
        os._exit(code)
