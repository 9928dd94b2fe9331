"""What the daemon loads at start: the config's model_snapshot, or else a snapshot (the one
named as the config file, or the newest unless --ncs) and then --models."""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon.config.model_settings import request_values
from daemon.config.settings import Config
from daemon.models.archives import startup_models_in_store
from daemon.errors import Conflict, ModelNotFound, TorchdError
from daemon.models import snapshots
from daemon.control.manager import ModelManager
from daemon.models.model_config import ConfigRefused
from daemon.models.registry import ModelVersion
from daemon.models.requests import RegisterRequest
from daemon.models.snapshots import SnapshotError, SnapshotStore
from daemon.workflows.manager import SNAPSHOT_KEY, WorkflowManager

logger = logging.getLogger(__name__)


class StartupError(Exception):
    """The daemon cannot start; the message names the file or model and what to do."""


async def restore_snapshot(store: SnapshotStore, manager: ModelManager,
                           named: Path | None = None) -> int:
    """Re-register every version of the newest snapshot (or of the one ``named`` as the config
    file) exactly (workers, default version); returns how many versions. Their workers start
    without being waited for here.

    All or nothing: a corrupt snapshot, or one naming an archive that has gone, stops the start
    with a StartupError naming the file (and the model). Serving without those models would
    let the next snapshot forget them for good.
    """
    try:
        found = store.load(named)
    except SnapshotError as exc:
        raise StartupError(f"{exc}; repair or remove that file (the snapshots before it are "
                           f"kept beside it), or {_way_out(named)}") from exc
    if found is None:
        return 0
    path, state = found
    models = snapshots.saved_models(state)
    logger.info("restoring %d model(s) from snapshot %s", len(models), path)
    count = 0
    for model in models:
        for version, entry in model.versions.items():
            try:
                await manager.restore(snapshots.register_request(model.name, entry))
            except (TorchdError, KeyError, TypeError, ValueError) as exc:
                raise _restore_failure(path, model.name, version, exc, named) from exc
            count += 1
        if model.default_version:
            manager.registry.set_default(model.name, model.default_version)
    return count


async def restore_workflows(store: SnapshotStore, workflows: WorkflowManager,
                            named: Path | None = None) -> int:
    """Re-register every workflow of the snapshot restore_snapshot restored, after its models:
    each node as it was saved; returns how many node versions. All or nothing, as for models:
    a workflow that cannot be restored stops the start with a StartupError naming it."""
    try:
        found = store.load(named)
    except SnapshotError as exc:   # restore_snapshot read the same file a moment ago
        raise StartupError(str(exc)) from exc
    if found is None:
        return 0
    path, state = found
    saved = state.get(SNAPSHOT_KEY) or {}
    if not isinstance(saved, dict):
        raise StartupError(f"snapshot {path}: {SNAPSHOT_KEY} must be an object; repair or "
                           f"remove that file, or {_way_out(named)}")
    count = 0
    for name, entry in saved.items():
        try:
            await workflows.restore(name, entry)
        except (TorchdError, KeyError, TypeError, ValueError) as exc:
            reason = exc.message if isinstance(exc, TorchdError) else f"bad entry ({exc!r})"
            raise StartupError(f"snapshot {path}: cannot restore workflow {name}: {reason}; "
                               "put its archives back, or remove the workflow from that file, "
                               f"or {_way_out(named)}") from exc
        count += len(workflows.get(name).models)
    if saved:
        logger.info("restored %d workflow(s) from snapshot %s", len(saved), path)
    return count


async def load_model_snapshot(config: Config, manager: ModelManager,
                              snapshot: dict[str, Any] | None = None) -> tuple[int, list[str]]:
    """The config's ``model_snapshot`` (TorchServe's JSON; or ``snapshot``, one read from a
    TorchServe snapshot file): register every version it lists
    from its ``marName`` in the model store, with its settings and workers, then make the
    versions marked ``defaultVersion`` the defaults; returns how many versions, and the names
    of the models refused for their configuration. Their workers start without being waited
    for here.

    All or nothing, like a snapshot restore: an entry that cannot be registered stops the start
    with a StartupError naming it (TorchServe refuses a model_snapshot naming a missing
    archive). Except a model whose settings torchd refuses (daemon/models/model_config.py):
    that is logged and the others are served, as with --models. ``modelCount`` 0 or less loads
    nothing, as in TorchServe.
    """
    if snapshot is None:
        snapshot = config.model_snapshot or {}
    count = snapshot.get("modelCount")
    if count is not None and count <= 0:
        logger.warning("model_snapshot %r has modelCount %d: starting without its models",
                       snapshot.get("name"), count)
        return 0, []
    loaded, refused = 0, []
    for name, versions in snapshot.get("models", {}).items():
        for version, entry in versions.items():
            mv = await _register_snapshot_entry(config, manager, name, version, entry)
            if mv is None:
                refused.append(name)
                continue
            loaded += 1
            if entry.get("defaultVersion"):
                manager.registry.set_default(name, mv.version)
    logger.info("loaded %d model version(s) from model_snapshot %r", loaded,
                snapshot.get("name"))
    return loaded, refused


async def restore_torchserve_snapshot(store: SnapshotStore, config: Config,
                                      manager: ModelManager) -> tuple[int, list[str]]:
    """Where TorchServe ran before torchd: while the snapshot directory holds no snapshot of
    torchd's, the newest of TorchServe's is restored (its model_snapshot, as load_model_snapshot
    loads one; its other settings are not read), as TorchServe would restore it."""
    if snapshots.list_snapshots(store.snapshot_dir):
        return 0, []
    try:
        found = snapshots.newest_torchserve_snapshot(store.snapshot_dir)
    except SnapshotError as exc:
        raise StartupError(f"{exc}; repair or remove that file, or start with --ncs") from exc
    if found is None:
        return 0, []
    path, model_snapshot = found
    logger.warning("no torchd snapshot in %s: restoring the models of TorchServe's snapshot %s "
                   "(its other settings are not read)", store.snapshot_dir, path.name)
    return await load_model_snapshot(config, manager, model_snapshot)


async def _register_snapshot_entry(config: Config, manager: ModelManager, name: str,
                                   version: str, entry: dict[str, Any]) -> ModelVersion | None:
    explicit = request_values(entry)   # they win over the archive's model-config.yaml
    req = RegisterRequest(url=entry["marName"], model_name=name, runtime=entry.get("runtimeType"),
                          synchronous=False, loaded_at_startup=True,
                          default_workers=_default_workers(config, manager), **explicit)
    try:
        mv = await manager.restore(req)
    except ConfigRefused as exc:
        logger.error("model_snapshot: model %s version %s from %s refused: %s", name, version,
                     entry["marName"], exc.message)
        return None
    except TorchdError as exc:
        raise StartupError(f"model_snapshot: cannot load model {name} version {version} from "
                           f"{entry['marName']}: {exc.message}") from exc
    if mv.version != version:
        # TorchServe takes the archive's version too; the key is only a label
        logger.warning("model_snapshot: model %s: %s holds version %s, listed as %s", name,
                       entry["marName"], mv.version, version)
    return mv


def _way_out(named: Path | None) -> str:
    """How to start without the snapshot: --ncs skips the newest, not one named as config."""
    return "start with --ncs" if named is None else "name another config file"


def _restore_failure(path: Path, name: str, version: str, exc: Exception,
                     named: Path | None) -> StartupError:
    reason = exc.message if isinstance(exc, TorchdError) else f"bad entry ({exc!r})"
    return StartupError(f"snapshot {path}: cannot restore model {name} version {version}: "
                        f"{reason}; put its archive back, or remove the model from that file, "
                        f"or {_way_out(named)}")


async def load_startup_models(config: Config, manager: ModelManager,
                              progress: Callable[[str], None] | None = None) -> list[str]:
    """--models / load_models: register each synchronously; returns the names of those that
    failed (declared, so readiness waits for them). ``progress`` hears which one is loading
    (systemd STATUS= lines).

    Workers, as TorchServe: the archive's model-config.yaml minWorkers/maxWorkers, else the
    ``models`` JSON's, else ``default_workers_per_model`` (unset: one per GPU in use, else one
    per CPU).
    """
    if config.load_all_models and config.model_store is not None:
        entries = startup_models_in_store(config.model_store)
    else:
        entries = list(config.startup_models)
    failed: list[str] = []
    for index, entry in enumerate(entries, 1):
        # A model restored from the snapshot keeps its restored state (as in TorchServe): that
        # holds what was scaled or changed since; --models only says what to start from.
        if entry.name and _registered(manager, entry.name):
            logger.info("startup model %s: %s already registered from the snapshot", entry.url,
                        entry.name)
            continue
        if progress is not None:
            progress(f"loading startup model {entry.url} ({index}/{len(entries)})")
        req = RegisterRequest(url=entry.url, model_name=entry.name,
                              default_workers=_default_workers(config, manager),
                              loaded_at_startup=True, synchronous=True)
        try:
            outcome = await manager.register(req)
            logger.info("startup model %s: %s", entry.url, outcome.message)
        except Conflict:   # named by its manifest, so only known once the archive was read
            logger.info("startup model %s: already registered from the snapshot", entry.url)
        except TorchdError as exc:
            failed.append(entry.name or declared_name(entry.url))
            logger.error("startup model %s failed: %s", entry.url, exc.message)
    return failed


def _default_workers(config: Config, manager: ModelManager) -> int:
    return config.startup_workers_per_model(len(manager.gpus.ids))


def declared_name(url: str) -> str:
    """The name a startup model without ``name=`` is expected under when its archive could not
    be read: the archive's file name without its suffixes (foo.mar, foo.tar.gz: foo)."""
    base = url.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".mar", ".tar.gz", ".tgz"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def _registered(manager: ModelManager, name: str) -> bool:
    try:
        manager.registry.model(name)
    except ModelNotFound:
        return False
    return True
