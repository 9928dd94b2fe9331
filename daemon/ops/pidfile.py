"""The daemon's pid file: written atomically, trusted only when it names a live torchd.

A pid file can outlive its process (kill -9, a reboot) and the pid can be reused by anything, so
"the pid exists" is not enough: the process must also look like torchd (its command line runs
``torchd`` or ``daemon.ops.cli``, or its title starts with ``torchd``) and must not be a zombie.

The daemons ``torchd start`` started are also listed, per user, in a directory under $TMPDIR
(one link per daemon, named by its pid, to its pid file): TorchServe keeps one pid file in
$TMPDIR, so its ``--stop`` finds the server from any directory, where torchd's pid file is in
``<log_location>``, by default ``./logs``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
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


# ---- the daemons `torchd start` started --------------------------------------------------------

def started_registry() -> Path:
    return Path(tempfile.gettempdir()) / f"torchd-started-{os.getuid()}"


def _usable_registry(registry: Path) -> bool:
    """Ours alone: made here, or made before by this user with no one else's access (anyone
    may make a name in /tmp, and a link in it would send ``stop`` elsewhere)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(registry, 0o700)
    try:
        found = os.lstat(registry)
    except OSError:
        return False
    return (stat.S_ISDIR(found.st_mode) and found.st_uid == os.getuid()
            and not found.st_mode & 0o077)


def record_started(path: Path, registry: Path) -> None:
    """List this process, whose pid file is ``path``, as one `torchd start` started."""
    try:
        if not _usable_registry(registry):
            logger.warning("%s is not this user's alone: `torchd stop` from another directory "
                           "will not find this daemon", registry)
            return
        entry = registry / str(os.getpid())
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()          # a pid reused since a daemon that was killed
        entry.symlink_to(Path(path).resolve())
    except OSError as exc:
        logger.warning("cannot list this daemon in %s: %s", registry, exc)


def forget_started(registry: Path) -> None:
    with contextlib.suppress(OSError):
        (registry / str(os.getpid())).unlink()


def started_daemons(registry: Path) -> list[tuple[int, Path]]:
    """(pid, pid file) of each running daemon that `torchd start` started; entries of daemons
    that are gone are removed."""
    if not _usable_registry(registry):
        return []
    running = []
    for entry in sorted(registry.iterdir()):
        try:
            target = Path(os.readlink(entry))
        except OSError:
            continue
        pid = int(entry.name) if entry.name.isdigit() else None
        if pid is not None and running_pid(target) == pid:
            running.append((pid, target))
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
    return running
