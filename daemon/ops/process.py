"""The daemon process's own arrangements: its runtime directory under $TMPDIR, the signals
that stop it, its place as the workers' subreaper, and its garbage collector's settings."""
from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path

from daemon.osutil import pid_gone

logger = logging.getLogger(__name__)
PR_SET_CHILD_SUBREAPER = 36

RUNTIME_PREFIX = "torchd-run-"


def make_runtime_dir() -> Path:
    """A private dir for worker sockets and extracted archives, named after this daemon's pid.

    A daemon killed with SIGKILL cannot clean up after itself, and its extracted archives may be
    large: the next daemon removes the dirs of daemons that are gone. (A running daemon holds
    its dir locked against /tmp cleaners: osutil.keep_from_cleaners.)
    """
    root = Path(tempfile.gettempdir())
    for stale in root.glob(f"{RUNTIME_PREFIX}*-*"):
        pid = stale.name[len(RUNTIME_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and pid_gone(int(pid)) and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{RUNTIME_PREFIX}{os.getpid()}-", dir=root))


# SIGHUP too (a closed terminal, a lost SSH session): TorchServe's JVM runs its shutdown hook
# on it, where Python's default would end the daemon at once, dropping in-flight requests and
# the final snapshot.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


EXIT_FORCED = 130   # a shell's code for a process ended by Ctrl-C


def stop_on(sig: signal.Signals, shutdown: asyncio.Event) -> None:
    """The first stop signal starts the graceful stop. A second Ctrl-C (SIGINT) is someone at
    a terminal who will not wait for the drain (up to unregister_model_timeout for a busy
    worker): exit now. The workers follow within a second (worker/watch.py), snapshots are
    already on disk, and the next start removes the runtime dir."""
    if not shutdown.is_set():
        logger.info("%s received: stopping", sig.name)
        shutdown.set()
    elif sig == signal.SIGINT:
        logger.warning("SIGINT again: exiting now, without waiting for the drain")
        logging.shutdown()   # flush the log handlers: os._exit skips them
        os._exit(EXIT_FORCED)


def become_subreaper() -> None:
    """Workers orphaned by a dead zygote re-parent to the daemon, staying its descendants."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        logger.warning("cannot become a child subreaper; orphaned workers re-parent to init")


# Container allocations between two collections of the youngest generation. Python's default,
# 700, meant a collection every ten or so requests (a request keeps about 70 containers), each
# walking every request in flight; serving makes no cyclic garbage, and whatever else does
# waits at most this many allocations (a few MB) for the collector.
GC_YOUNG_THRESHOLD = 20_000


def settle_garbage_collector() -> None:
    """What the start built (modules, apps, models, the gRPC server) lives as long as the
    daemon: frozen, it is never walked again by the cyclic collector, whose full collections
    otherwise walk all of it while requests wait (profiled under load: 9% of the daemon's CPU
    in the collector)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
