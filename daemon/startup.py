"""What the daemon loads at start: the newest snapshot (unless --ncs), then --models."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from daemon.config import Config, startup_models_in_store
from daemon.errors import TorchdError
from daemon.model_manager import ModelManager, RegisterRequest
from daemon.registry import Registry
from daemon.snapshot import load_latest_snapshot

logger = logging.getLogger(__name__)


def snapshot_state(registry: Registry) -> dict[str, Any]:
    return {"models": registry.snapshot_state()}


async def restore_snapshot(config: Config, manager: ModelManager) -> int:
    """Re-register every version of the newest snapshot exactly (workers, default version).

    Raises SnapshotError naming the file when it is corrupt; an archive that has gone missing
    is an error naming the model and the snapshot.
    """
    found = load_latest_snapshot(config.snapshot_dir)
    if found is None:
        return 0
    path, state = found
    logger.info("restoring %d model(s) from snapshot %s", len(state["models"]), path)
    count = 0
    for name, model in state["models"].items():
        for version, entry in model.get("versions", {}).items():
            try:
                await _restore_version(manager, name, entry)
            except TorchdError as exc:
                raise RuntimeError(f"snapshot {path}: cannot restore model {name} version "
                                   f"{version}: {exc.message}") from exc
            count += 1
        if model.get("defaultVersion"):
            manager.registry.set_default(name, model["defaultVersion"])
    return count


async def _restore_version(manager: ModelManager, name: str, entry: dict[str, Any]) -> None:
    source = entry.get("source")
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
    manager.supervisor.scale(mv, mv.settings.min_workers, mv.settings.max_workers)


async def load_startup_models(config: Config, manager: ModelManager) -> None:
    """--models / load_models: register each with the startup worker count, synchronously."""
    if config.load_all_models and config.model_store is not None:
        entries = startup_models_in_store(config.model_store)
    else:
        entries = list(config.startup_models)
    workers = config.startup_workers_per_model
    for entry in entries:
        req = RegisterRequest(url=entry.url, model_name=entry.name, initial_workers=workers,
                              loaded_at_startup=True, synchronous=True)
        try:
            outcome = await manager.register(req)
            logger.info("startup model %s: %s", entry.url, outcome.message)
        except TorchdError as exc:
            logger.error("startup model %s failed: %s", entry.url, exc.message)
