"""Notice the daemon's death even when the socket is idle or a handler is busy (no orphans),
and take the processes a handler started along when leaving."""
from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable

import psutil

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5


def open_pidfd(pid: int) -> int | None:
    """A pidfd that becomes readable when ``pid`` exits; None where pidfds are unavailable.

    Raises ProcessLookupError when the process is already gone.
    """
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise
    except OSError as exc:  # old kernel, seccomp: fall back to polling
        logger.debug("pidfd_open(%d) failed (%s); polling instead", pid, exc)
        return None


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as dead: it will never talk to us again).

    The worker side's liveness check; the daemon's is daemon.osutil.pid_gone, with the same
    answers (this package must not import the daemon's).
    """
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # cannot tell (e.g. permissions): assume alive rather than exit


def wait_for_exit(pid: int, pidfd: int | None) -> None:
    """Block until ``pid`` has exited."""
    if pidfd is not None:
        while True:
            readable, _, _ = select.select([pidfd], [], [])
            if readable:
                return
    while process_alive(pid):
        time.sleep(POLL_SECONDS)


def start_daemon_watch(pid: int, on_gone: Callable[[], None]) -> threading.Thread | None:
    """Call ``on_gone`` (which should exit the process) from a thread once ``pid`` dies.

    A pid <= 0 disables the watch (a worker started by hand for debugging).
    """
    if pid <= 0:
        logger.warning("no daemon pid given: this process will not follow the daemon's exit")
        return None
    try:
        pidfd = open_pidfd(pid)
    except ProcessLookupError:
        on_gone()
        return None

    def watch() -> None:
        wait_for_exit(pid, pidfd)
        on_gone()

    thread = threading.Thread(target=watch, name="daemon-watch", daemon=True)
    thread.start()
    return thread


def lead_own_group() -> None:
    """Make this process (a worker or a template, just forked) the leader of a process group
    of its own, which the processes its handler starts (subprocess, multiprocessing, a
    DataLoader's workers) join: the daemon ends the whole group when the worker ends, so none
    outlives it. An exec-spawned worker leads one already (its own session)."""
    if os.getpgrp() != os.getpid():
        os.setpgid(0, 0)


def end_own_group() -> None:
    """SIGKILL the other processes of the group this process leads (if it leads one), as it
    leaves: the daemon, which ends the group after it, may be gone. One by one, so that this
    process still leaves with its own exit code."""
    me = os.getpid()
    if os.getpgrp() != me:
        return
    for proc in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if proc.pid != me and os.getpgid(proc.pid) == me:
                proc.kill()   # psutil's: refused if the pid was reused meanwhile
