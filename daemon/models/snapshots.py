"""Snapshots of the registered models: the schema both ways, and the atomic files.

This module alone knows what a snapshot holds: ``capture`` turns a Registry into the state
written, ``saved_models`` and ``register_request`` turn a state read back into the
registrations that recreate every version as it was. ``SnapshotStore`` is what the daemon
holds: ``save`` after every management change and at shutdown, ``load_latest`` at start.

A snapshot is a JSON file in ``<log_location>/config/`` named
``<UTC yyyymmddHHMMSSffffff>-<seq>-<kind>.cfg``: names sort in write order, even when two are
written in the same microsecond or the clock steps back, because a new name is always made to
sort after the newest one on disk.

Atomicity: write a temp file in the same directory, flush, fsync, rename over the final name,
fsync the directory. A reader therefore sees a whole old file or a whole new one, and a kill -9
at any moment loses nothing that was already renamed into place.

State shape (validated lightly on read; ``register_request`` checks each entry)::

    {"version": 1, "created": "<iso8601>",
     "models": {name: {"defaultVersion": v, "versions": {v: {"url": ..., "minWorkers": ...}}}},
     "workflows": {name: {"url": ..., "nodes": {node: {"minWorkers": ...}}}}}

``"workflows"`` is the workflow manager's section (``SnapshotStore.sections``,
daemon/workflows/manager.py): the versions serving a workflow's nodes are left out of
``"models"``, its entry brings them back.

A version's settings are saved under their keys and restored as explicit values, for each
setting daemon/config/model_settings.py marks ``snapshot``; the others are resolved again from
the archive's model-config.yaml and the config at restore.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.config.model_settings import request_values, snapshot_entry
from daemon.config.model_values import parse_model_snapshot
from daemon.config.properties import parse_properties
from daemon.config.values import InvalidValue
from daemon.errors import InternalServerError
from daemon.osutil import pid_gone, write_atomically
from daemon.models.requests import RegisterRequest
from daemon.models.registry import ModelVersion, Registry

logger = logging.getLogger(__name__)

SNAPSHOT_VERSION = 1
KEEP_DEFAULT = 10
_NAME = re.compile(r"(\d{20})-(\d{6})-([a-z]+)\.cfg")
_TORCHSERVE_NAME = re.compile(r"\d{17}-(startup|snapshot|shutdown)\.cfg")   # yyyyMMddHHmmssSSS
_TEMP_PREFIX = ".snapshot-tmp-"
# Naming, writing and pruning happen under one lock so two threads of one process never pick
# the same name or prune each other's file. (Capturing and saving together is serialised by
# SnapshotStore, or an older state could land last.)
_WRITE_LOCK = threading.Lock()


class SnapshotError(Exception):
    """A snapshot cannot be read or written; the message names the file."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"snapshot {path}: {reason}")
        self.path = path
        self.reason = reason


class SnapshotStore:
    """The daemon's snapshot directory: save the registry's state, load the newest state."""

    def __init__(self, snapshot_dir: Path, keep: int = KEEP_DEFAULT,
                 enabled: bool = True) -> None:
        self.snapshot_dir = Path(snapshot_dir)
        self.keep = keep
        self.enabled = enabled   # False: save writes nothing (Config.write_snapshots)
        # Further top-level keys of the state, each captured by its owner with the models
        # (``"workflows"``: daemon/workflows/); a reader of the state takes its own key.
        self.sections: dict[str, Callable[[], Any]] = {}
        # Capture and write under one lock: two saves in flight could otherwise land in the
        # opposite order and leave the older state as the newest file.
        self._lock = asyncio.Lock()

    async def save(self, registry: Registry, kind: str = "snapshot") -> Path | None:
        """Persist the registry's state now (the write runs off the event loop); the file, or
        None when the store is not enabled. ``kind`` ends the file's name, as TorchServe's:
        ``startup`` once the daemon serves, ``snapshot`` after a change, ``shutdown``."""
        if not self.enabled:
            return None
        async with self._lock:
            state = capture(registry)
            state.update({key: section() for key, section in self.sections.items()})
            return await asyncio.to_thread(save_snapshot, self.snapshot_dir, state, kind=kind,
                                           keep=self.keep)

    async def save_change(self, registry: Registry, failure: str,
                          undo: Callable[[], Awaitable[Any]] | None = None) -> None:
        """Persist a management change before it is answered 2xx, so that a crash right after
        loses nothing answered. A change that cannot be saved (a full or read-only disk) is
        undone where ``undo`` can, and answered 500: ``failure`` says what became of it (a 2xx
        would promise what a restart would not keep)."""
        try:
            await self.save(registry)
        except SnapshotError as exc:
            logger.error("%s: %s", failure, exc)
            if undo is not None:
                await undo()    # the newest snapshot on disk holds the state it returns to
            raise InternalServerError(f"{failure}: {exc}") from None

    def load(self, path: Path | None = None) -> tuple[Path, dict[str, Any]] | None:
        """The snapshot at ``path`` (one named as the config file), else the newest one (see
        ``load_latest_snapshot``): None without a snapshot, SnapshotError if corrupt."""
        if path is None:
            return load_latest_snapshot(self.snapshot_dir)
        try:
            return read_snapshot(Path(path))
        except FileNotFoundError:
            raise SnapshotError(Path(path), "cannot read: it is gone") from None


# ---- the schema: a Registry captured, a state turned back into registrations -----------------

def capture(registry: Registry) -> dict[str, Any]:
    """Every registered version and each model's default version, as a snapshot holds them.
    A workflow's nodes are left out: the workflow's own entry brings them back."""
    models: dict[str, dict[str, Any]] = {}
    for mv in registry.all_versions():
        if mv.workflow is not None:
            continue
        model = models.setdefault(mv.name, {
            "defaultVersion": registry.model(mv.name).default_version, "versions": {}})
        model["versions"][mv.version] = _version_entry(mv)
    return {"models": models}


def _version_entry(mv: ModelVersion) -> dict[str, Any]:
    """A version as its registration saw it; the settings are the table's ``snapshot`` ones."""
    return {"url": mv.url, "handler": mv.handler, "runtime": mv.runtime,
            **snapshot_entry(mv.settings), "loadedAtStartup": mv.loaded_at_startup,
            "downloaded": mv.archive.downloaded, "source": str(mv.archive.source)}


@dataclass(frozen=True)
class SavedModel:
    """One model of a snapshot: its versions' entries by version, and its default version."""

    name: str
    default_version: str | None
    versions: dict[str, Any]


def saved_models(state: dict[str, Any]) -> list[SavedModel]:
    """The models of a state read by ``load_latest_snapshot`` (which validated its shape)."""
    return [SavedModel(name, model.get("defaultVersion") or None, model.get("versions", {}))
            for name, model in state["models"].items()]


def register_request(name: str, entry: Any) -> RegisterRequest:
    """The registration that recreates a saved version as it was: the url it was registered
    with (its modelUrl), its settings and workers, started without waiting.

    A downloaded archive is loaded from its copy in the model store: never fetched again, nor
    checked against today's allowed_urls. Raises KeyError, TypeError or ValueError for an
    entry that cannot be restored.
    """
    if not isinstance(entry, dict):
        raise TypeError(f"a version entry must be an object, not {type(entry).__name__}")
    copy = None
    if entry.get("downloaded"):
        if not isinstance(entry.get("source"), str) or not entry["source"]:
            # Without its copy the only way back would be a new download: refuse instead.
            raise ValueError("a downloaded archive whose copy in the model store is not named")
        copy = Path(entry["source"]).name
    return RegisterRequest(url=entry["url"], model_name=name, handler=entry.get("handler"),
                           runtime=entry.get("runtime"), synchronous=False,
                           loaded_at_startup=bool(entry.get("loadedAtStartup")),
                           downloaded_copy=copy, **request_values(entry))


# ---- the files -------------------------------------------------------------------------------

def save_snapshot(snapshot_dir: Path, state: dict[str, Any], kind: str = "snapshot",
                  keep: int = KEEP_DEFAULT) -> Path:
    """Write ``state`` as the newest snapshot and prune all but the newest ``keep``.

    Returns the path written. Raises SnapshotError if the state is malformed or the write fails
    (no temp file is left behind either way).
    """
    if not re.fullmatch(r"[a-z]+", kind):
        raise ValueError(f"snapshot kind must be lowercase letters, not {kind!r}")
    snapshot_dir = Path(snapshot_dir)
    try:
        snapshot_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:   # a file in its place, a read-only or full disk
        raise SnapshotError(snapshot_dir, f"cannot create: {exc.strerror or exc}") from None
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
        try:
            return read_snapshot(files[-1])
        except FileNotFoundError:
            continue  # pruned by a concurrent writer between listing and opening
    raise SnapshotError(Path(snapshot_dir), "snapshots keep disappearing while being read")


def read_snapshot(path: Path) -> tuple[Path, dict[str, Any]]:
    """The snapshot at ``path`` and its state; SnapshotError if it cannot be read or is
    corrupt (FileNotFoundError as it is: a concurrent prune, for load_latest_snapshot)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SnapshotError(path, f"cannot read: {exc.strerror or exc}") from None
    return path, parse_snapshot(path, data)


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


def newest_torchserve_snapshot(snapshot_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """TorchServe's newest snapshot in ``snapshot_dir`` (``<17 digits>-<kind>.cfg``: a
    properties file whose ``model_snapshot`` lists the models), and that model_snapshot; for a
    torchd started where TorchServe ran, before it has a snapshot of its own. SnapshotError
    when the newest one cannot be read."""
    try:
        names = sorted(n for n in os.listdir(snapshot_dir) if _TORCHSERVE_NAME.fullmatch(n))
    except FileNotFoundError:
        return None
    if not names:
        return None
    path = Path(snapshot_dir) / names[-1]
    try:
        properties = parse_properties(path.read_text(encoding="utf-8", errors="replace"))
        snapshot = parse_model_snapshot(properties.get("model_snapshot"))
    except OSError as exc:
        raise SnapshotError(path, f"cannot read: {exc.strerror or exc}") from None
    except InvalidValue as exc:
        raise SnapshotError(path, f"model_snapshot: {exc}") from None
    if snapshot is None:
        raise SnapshotError(path, "no model_snapshot in this TorchServe snapshot")
    return path, snapshot


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
    # the writer's pid in the temp name: _remove_stale_temps knows a killed writer's leftovers
    try:
        write_atomically(target, data, f"{_TEMP_PREFIX}{os.getpid()}-")
    except OSError as exc:
        raise SnapshotError(target, f"cannot write: {exc.strerror or exc}") from None


def _prune(snapshot_dir: Path, keep: int) -> None:
    for old in list_snapshots(snapshot_dir)[:-keep] if keep > 0 else []:
        with contextlib.suppress(FileNotFoundError):
            old.unlink()


def _remove_stale_temps(snapshot_dir: Path) -> None:
    """Temp files left by a writer that was killed mid-write (its pid is gone)."""
    for name in os.listdir(snapshot_dir):
        match = re.fullmatch(re.escape(_TEMP_PREFIX) + r"(\d+)-.*", name)
        if match and pid_gone(int(match.group(1))):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(snapshot_dir / name)
