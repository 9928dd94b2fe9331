"""The daemon's pid file: written atomically, trusted only when it names a live torchd.

A pid file can outlive its process (kill -9, a reboot) and the pid can be reused by anything, so
"the pid exists" is not enough: the process must also look like torchd (its command line runs
``torchd`` or ``daemon.ops.cli``, or its title starts with ``torchd``) and must not be a zombie.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)


def read_pid(path: Path) -> int | None:
    """The pid in the file, or None when it is missing or does not hold a positive integer."""
    try:
        text = Path(path).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def write_pid(path: Path, pid: int | None = None) -> None:
    """Write ``pid`` (default: ours) via a temp file and rename, so readers never see half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(f"{pid or os.getpid()}\n")
    os.replace(temp, path)


def remove_pid(path: Path, pid: int | None = None) -> bool:
    """Remove the file if it names ``pid`` (default: ours); never delete another daemon's."""
    if read_pid(path) != (pid or os.getpid()):
        return False
    with contextlib.suppress(FileNotFoundError):
        Path(path).unlink()
    return True


def is_torchd_process(pid: int) -> bool:
    """A live, non-zombie process whose command line or title says it is torchd."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        cmdline = process.cmdline()
        name = process.name()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True  # someone else's process we cannot inspect: do not claim it is dead
    if name.startswith("torchd"):
        return True
    return any(arg.startswith("torchd") or os.path.basename(arg).startswith("torchd")
               or arg == "daemon.ops.cli" for arg in cmdline[:3])


def running_pid(path: Path) -> int | None:
    """The pid of the torchd named by the pid file, or None when it is not running."""
    pid = read_pid(path)
    if pid is None or not is_torchd_process(pid):
        return None
    return pid
