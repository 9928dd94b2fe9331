"""Small OS facts every layer needs: durable directory entries, whether a pid has exited."""
from __future__ import annotations

import os
from pathlib import Path

import psutil


def fsync_dir(directory: Path) -> None:
    """Make a rename or link in ``directory`` survive a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pid_gone(pid: int) -> bool:
    """True once the process has exited (a zombie counts as exited: it runs no code).

    The daemon's one liveness check. Workers have their own, worker.watch.process_alive, with
    the same answers: the worker package never imports the daemon's.
    """
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False  # cannot tell (e.g. permissions): never report a live process gone
