"""Small OS facts every layer needs: files written whole and durably, a directory kept from
/tmp cleaners, whether a pid has exited and how it ended, how many CPUs this process may use, how
many connections its descriptors allow, how much a socket's peer has yet to take."""
from __future__ import annotations

import contextlib
import fcntl
import math
import os
import resource
import signal
import struct
import tempfile
import termios
from pathlib import Path

import psutil


def fsync_dir(directory: Path) -> None:
    """Make a rename or link in ``directory`` survive a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(target: Path, data: bytes, temp_prefix: str) -> None:
    """``target`` holds ``data`` whole, or stays as it was: written to a temp file beside it
    (``temp_prefix`` + random; mode 0600 from its creation, so secrets are never readable by
    others, even briefly), fsynced, renamed over it, the rename made durable. A failure
    removes the temp file and raises the OSError."""
    fd, temp = tempfile.mkstemp(prefix=temp_prefix, dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_dir(target.parent)


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


def exit_description(returncode: int | None) -> str:
    """How a process ended, from a return code as asyncio and the zygote report it (negative:
    the signal that killed it), in the words the logs and error messages use."""
    if returncode is None:
        return "exit status not reported"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


def keep_from_cleaners(directory: Path) -> int:
    """Take a shared BSD lock on ``directory``, held while the returned descriptor stays open.

    systemd-tmpfiles' ageing (10 days for /tmp, the unit's PrivateTmp included) skips a locked
    directory and everything below it, as systemd's TEMPORARY_DIRECTORIES.md advises: an
    archive extracted at start and not read since would otherwise be deleted under a running
    daemon, and the next worker start would fail for good. Shared: holders do not exclude
    each other."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)   # not inherited (PEP 446)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        os.close(fd)
        raise
    return fd


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup"),
                self_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """The CPUs this process may really use: its affinity mask, capped by a cgroup CPU quota
    (a container or a systemd unit with CPUQuota=). ``os.cpu_count()`` counts the host's CPUs:
    a 1-CPU pod on a 64-core node would size itself for 64."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root, self_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def cgroup_cpu_quota(root: Path, self_cgroup: Path) -> float | None:
    """CPUs' worth of quota on this process's cgroup or any cgroup above it (the smallest), or
    None when there is none: cgroup v2 (``cpu.max``) and v1 (``cpu.cfs_quota_us``)."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    quotas = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":          # v2: one hierarchy
            dirs, read = [root], _v2_quota
        elif "cpu" in controllers.split(","):   # v1: the cpu controller's own mount
            dirs, read = [root / "cpu", root / "cpu,cpuacct"], _v1_quota
        else:
            continue
        parts = [part for part in path.split("/") if part]
        for base in dirs:
            for depth in range(len(parts), -1, -1):
                quota = read(base.joinpath(*parts[:depth]))
                if quota is not None:
                    quotas.append(quota)
    return min(quotas) if quotas else None


def _v2_quota(directory: Path) -> float | None:
    try:
        limit, period = (directory / "cpu.max").read_text().split()[:2]
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


# Descriptors kept for everything but client connections: worker sockets and pipes, archives
# being unpacked, downloads, logs, snapshots.
RESERVED_FILES = 1024
_NO_LIMIT_TARGET = 1 << 20   # where an unlimited hard limit takes the soft one


def open_files_limit() -> int:
    """RLIMIT_NOFILE's soft limit, raised to the hard limit first (idempotent; Go's runtime
    does the same at start): every client connection is a descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _NO_LIMIT_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return _NO_LIMIT_TARGET if soft == resource.RLIM_INFINITY else soft


def connections_allowed(wanted: int, listeners: int) -> int:
    """Open connections each of ``listeners`` listeners may hold: ``wanted``, or fewer when
    that many on every listener would use the descriptors RESERVED_FILES keeps."""
    spare = max(open_files_limit() - RESERVED_FILES, listeners)
    return max(1, min(wanted, spare // listeners))


# Linux's ioctl for the bytes in a socket's send queue (SIOCOUTQ, the same number as TIOCOUTQ)
_OUTQ = getattr(termios, "TIOCOUTQ", None)


def send_queue(fd: int) -> int:
    """Bytes written to socket ``fd`` that its peer has not taken yet (TCP: not acknowledged):
    the kernel's buffer, which grows to megabytes, so a slow reader's progress shows here long
    before it drains a buffer above it. 0 where the system does not say."""
    if _OUTQ is None:
        return 0
    try:
        return int(struct.unpack("i", fcntl.ioctl(fd, _OUTQ, b"\0\0\0\0"))[0])
    except OSError:
        return 0
