"""Snapshots of the registered models, written atomically after every management change.

A snapshot is a JSON file in ``<log_location>/config/`` named
``<UTC yyyymmddHHMMSSffffff>-<seq>-<kind>.cfg``: names sort in write order, even when two are
written in the same microsecond or the clock steps back, because a new name is always made to
sort after the newest one on disk.

Atomicity: write a temp file in the same directory, flush, fsync, rename over the final name,
fsync the directory. A reader therefore sees a whole old file or a whole new one, and a kill -9
at any moment loses nothing that was already renamed into place.

State shape (validated lightly; the registry owns its meaning)::

    {"version": 1, "created": "<iso8601>",
     "models": {name: {"defaultVersion": v, "versions": {v: {"url": ..., "minWorkers": ...}}}}}
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from daemon.fsutil import fsync_dir

logger = logging.getLogger(__name__)

SNAPSHOT_VERSION = 1
KEEP_DEFAULT = 10
_NAME = re.compile(r"(\d{20})-(\d{6})-([a-z]+)\.cfg")
_TEMP_PREFIX = ".snapshot-tmp-"
# Naming, writing and pruning happen under one lock so two threads of one process never pick
# the same name or prune each other's file. (Callers that capture state on one thread and save
# on another must still serialise capture+save themselves, or an older state can land last.)
_WRITE_LOCK = threading.Lock()


class SnapshotError(Exception):
    """A snapshot cannot be read or written; the message names the file."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"snapshot {path}: {reason}")
        self.path = path
        self.reason = reason


def save_snapshot(snapshot_dir: Path, state: dict[str, Any], kind: str = "snapshot",
                  keep: int = KEEP_DEFAULT) -> Path:
    """Write ``state`` as the newest snapshot and prune all but the newest ``keep``.

    Returns the path written. Raises SnapshotError if the state is malformed or the write fails
    (no temp file is left behind either way).
    """
    if not re.fullmatch(r"[a-z]+", kind):
        raise ValueError(f"snapshot kind must be lowercase letters, not {kind!r}")
    snapshot_dir = Path(snapshot_dir)
    snapshot_dir.mkdir(parents=True, exist_ok=True)
    document = _complete(state)
    validate_state(document, snapshot_dir)
    data = json.dumps(document, indent=1, sort_keys=True).encode()
    with _WRITE_LOCK:
        target = snapshot_dir / _next_name(snapshot_dir, kind)
        _write_atomically(target, data)
        _prune(snapshot_dir, keep)
        _remove_stale_temps(snapshot_dir)
    logger.debug("wrote snapshot %s (%d models)", target, len(document["models"]))
    return target


def load_latest_snapshot(snapshot_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest snapshot and its state, or None when there is none.

    A corrupt newest file is an error (SnapshotError naming it), never a silent fall back to an
    older one: that older state would quietly forget models a client was told are registered.
    """
    for _attempt in range(5):
        files = list_snapshots(snapshot_dir)
        if not files:
            return None
        newest = files[-1]
        try:
            data = newest.read_bytes()
        except FileNotFoundError:
            continue  # pruned by a concurrent writer between listing and opening
        except OSError as exc:
            raise SnapshotError(newest, f"cannot read: {exc.strerror or exc}") from None
        return newest, parse_snapshot(newest, data)
    raise SnapshotError(Path(snapshot_dir), "snapshots keep disappearing while being read")


def parse_snapshot(path: Path, data: bytes) -> dict[str, Any]:
    try:
        state = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotError(path, f"not valid JSON ({exc})") from None
    validate_state(state, path)
    return state


def validate_state(state: Any, path: Path) -> None:
    if not isinstance(state, dict):
        raise SnapshotError(path, "expected a JSON object")
    version = state.get("version", SNAPSHOT_VERSION)
    if version != SNAPSHOT_VERSION:
        raise SnapshotError(path, f"unsupported snapshot version {version!r}")
    models = state.get("models")
    if not isinstance(models, dict):
        raise SnapshotError(path, 'expected a "models" object')
    for name, model in models.items():
        if not isinstance(model, dict) or not isinstance(model.get("versions", {}), dict):
            raise SnapshotError(path, f'model {name!r}: expected {{"versions": {{...}}}}')


def list_snapshots(snapshot_dir: Path) -> list[Path]:
    """Snapshot files, oldest first (other files in the directory are ignored)."""
    try:
        names = os.listdir(snapshot_dir)
    except FileNotFoundError:
        return []
    return [Path(snapshot_dir) / name for name in sorted(n for n in names if _NAME.fullmatch(n))]


def _complete(state: dict[str, Any]) -> dict[str, Any]:
    document = dict(state)
    document.setdefault("version", SNAPSHOT_VERSION)
    document.setdefault("created", _utc_stamp(time.time(), "%Y-%m-%dT%H:%M:%S.{us}Z"))
    return document


def _utc_stamp(now: float, pattern: str) -> str:
    micros = f"{int(now * 1_000_000) % 1_000_000:06d}"
    return time.strftime(pattern, time.gmtime(now)).replace("{us}", micros)


def _next_name(snapshot_dir: Path, kind: str) -> str:
    stamp, seq = _utc_stamp(time.time(), "%Y%m%d%H%M%S{us}"), 0
    existing = list_snapshots(snapshot_dir)
    if existing:
        match = _NAME.fullmatch(existing[-1].name)
        assert match is not None
        last_stamp, last_seq = match.group(1), int(match.group(2))
        if stamp <= last_stamp:  # same microsecond, or the clock stepped back
            stamp, seq = last_stamp, last_seq + 1
    return f"{stamp}-{seq:06d}-{kind}.cfg"


def _write_atomically(target: Path, data: bytes) -> None:
    fd, temp = tempfile.mkstemp(prefix=f"{_TEMP_PREFIX}{os.getpid()}-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o600)
        os.rename(temp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        if isinstance(exc, OSError):
            raise SnapshotError(target, f"cannot write: {exc.strerror or exc}") from None
        raise
    fsync_dir(target.parent)



def _prune(snapshot_dir: Path, keep: int) -> None:
    for old in list_snapshots(snapshot_dir)[:-keep] if keep > 0 else []:
        with contextlib.suppress(FileNotFoundError):
            old.unlink()


def _remove_stale_temps(snapshot_dir: Path) -> None:
    """Temp files left by a writer that was killed mid-write (its pid is gone)."""
    for name in os.listdir(snapshot_dir):
        match = re.fullmatch(re.escape(_TEMP_PREFIX) + r"(\d+)-.*", name)
        if match and not _pid_alive(int(match.group(1))):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(snapshot_dir / name)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
