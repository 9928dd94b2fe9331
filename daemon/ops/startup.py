"""What the daemon loads at start: the newest snapshot (unless --ncs), then --models."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon.config.settings import Config, StartupModel, startup_models_in_store
from daemon.errors import Conflict, ModelNotFound, TorchdError
from daemon.models.manager import ModelManager, RegisterRequest
from daemon.models.registry import Registry
from daemon.models.snapshots import SnapshotError, load_latest_snapshot

logger = logging.getLogger(__name__)


class StartupError(Exception):
    """The daemon cannot start; the message names the file or model and what to do."""


def snapshot_state(registry: Registry) -> dict[str, Any]:
    return {"models": registry.snapshot_state()}


async def restore_snapshot(config: Config, manager: ModelManager) -> int:
    """Re-register every version of the newest snapshot exactly (workers, default version).

    All or nothing: a corrupt snapshot, or one naming an archive that has gone, stops the start
    with a StartupError naming the file (and the model). Serving without those models would
    let the next snapshot forget them for good.
    """
    try:
        found = load_latest_snapshot(config.snapshot_dir)
    except SnapshotError as exc:
        raise StartupError(f"{exc}; repair or remove that file (the snapshots before it are "
                           "kept beside it), or start with --ncs") from exc
    if found is None:
        return 0
    path, state = found
    logger.info("restoring %d model(s) from snapshot %s", len(state["models"]), path)
    count = 0
    for name, model in state["models"].items():
        for version, entry in model.get("versions", {}).items():
            try:
                await _restore_version(manager, name, entry)
            except (TorchdError, KeyError, TypeError, ValueError) as exc:
                reason = exc.message if isinstance(exc, TorchdError) else f"bad entry ({exc!r})"
                raise StartupError(
                    f"snapshot {path}: cannot restore model {name} version {version}: "
                    f"{reason}; put its archive back, or remove the model from that file, or "
                    "start with --ncs") from exc
            count += 1
        if model.get("defaultVersion"):
            manager.registry.set_default(name, model["defaultVersion"])
    return count


async def _restore_version(manager: ModelManager, name: str, entry: dict[str, Any]) -> None:
    source = entry.get("source")
    # A downloaded archive is restored from its copy in the model store, never fetched again.
    url = Path(source).name if entry.get("downloaded") and source else entry["url"]
    req = RegisterRequest(url=url, model_name=name, handler=entry.get("handler"),
                          runtime=entry.get("runtime"), batch_size=entry.get("batchSize"),
                          max_batch_delay=entry.get("maxBatchDelay"),
                          initial_workers=entry.get("minWorkers"),
                          max_workers=entry.get("maxWorkers"), synchronous=False,
                          response_timeout=entry.get("responseTimeout"),
                          startup_timeout=entry.get("startupTimeout"),
                          job_queue_size=entry.get("jobQueueSize"),
                          loaded_at_startup=bool(entry.get("loadedAtStartup")))
    mv = await manager.add_version(req)
    if entry.get("downloaded"):
        mv.archive = dataclasses.replace(mv.archive, downloaded=True)
    mv.url = entry["url"]
    manager.supervisor.scale(mv)


async def load_startup_models(config: Config, manager: ModelManager,
                              progress: Callable[[str], None] | None = None) -> int:
    """--models / load_models: register each synchronously; returns how many failed.
    ``progress`` hears which one is loading (systemd STATUS= lines).

    Workers: the ``models`` JSON's minWorkers/maxWorkers when it sets them for the model (as
    TorchServe), else ``default_workers_per_model`` (one per CPU when unset).
    """
    if config.load_all_models and config.model_store is not None:
        entries = startup_models_in_store(config.model_store)
    else:
        entries = list(config.startup_models)
    failed = 0
    for index, entry in enumerate(entries, 1):
        # A model restored from the snapshot keeps its restored state (as in TorchServe): that
        # holds what was scaled or changed since; --models only says what to start from.
        if entry.name and _registered(manager, entry.name):
            logger.info("startup model %s: %s already registered from the snapshot", entry.url,
                        entry.name)
            continue
        if progress is not None:
            progress(f"loading startup model {entry.url} ({index}/{len(entries)})")
        workers = None if _json_sets_workers(config, entry) else config.startup_workers_per_model
        req = RegisterRequest(url=entry.url, model_name=entry.name, initial_workers=workers,
                              loaded_at_startup=True, synchronous=True)
        try:
            outcome = await manager.register(req)
            logger.info("startup model %s: %s", entry.url, outcome.message)
        except Conflict:   # named by its manifest, so only known once the archive was read
            logger.info("startup model %s: already registered from the snapshot", entry.url)
        except TorchdError as exc:
            failed += 1
            logger.error("startup model %s failed: %s", entry.url, exc.message)
    return failed


def _registered(manager: ModelManager, name: str) -> bool:
    try:
        manager.registry.model(name)
    except ModelNotFound:
        return False
    return True


def _json_sets_workers(config: Config, entry: StartupModel) -> bool:
    versions = config.models.get(entry.name or "") or {}
    return any("minWorkers" in settings for settings in versions.values())
