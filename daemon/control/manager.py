"""What the management API does: register, scale, describe, unregister, list, set-default.

Routes parse HTTP and render; this module holds the rules (TorchServe's error order, worker
limits, snapshots after every change) and changes desired state through the Registry and the
Supervisor.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shutil
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.models import archives
from daemon.config.model_settings import BY_FIELD, ModelSettings, describe_entry
from daemon.config.settings import Config
from daemon.models.dependencies import install_requirements, remove_installed
from daemon.gpus.devices import device_settings
from daemon.errors import (BadRequest, InternalServerError, MethodNotAllowed, ModelNotFound,
                           ModelVersionNotFound, ServiceUnavailable)
from daemon.models.registry import ModelVersion, Registry
from daemon.gpus.inventory import GpuInventory
from daemon.metrics import Metrics
from daemon.models.queue import JobQueue
from daemon.models.requests import (RegisterRequest, check_name, check_parameters,
                                    check_scale_timeout)
from daemon.models.model_config import check_config, ignored_config_keys, warn_ignored_keys
from daemon.models.layers import Layers, explicit_values, resolve_settings
from daemon.models.snapshots import SnapshotStore
from daemon.control.paging import list_page
from daemon.workers.supervisor import Supervisor


logger = logging.getLogger(__name__)

MIN_WORKERS_KEY = BY_FIELD["min_workers"].key
VALID_RUNTIMES = ("python", "python3")
SYNC_SLACK = 10.0      # seconds a synchronous call waits beyond the model's startup_timeout
COMPILE_CACHES = "compile-cache"   # under the runtime dir's models/: one directory per version


@dataclass
class Outcome:
    status: int
    message: str


class ModelManager:
    def __init__(self, config: Config, registry: Registry, supervisor: Supervisor,
                 extract_root: Path, snapshots: SnapshotStore, metrics: Metrics,
                 gpus: GpuInventory | None = None) -> None:
        self.config = config
        self.registry = registry
        self.supervisor = supervisor
        self.extract_root = extract_root
        self.snapshots = snapshots
        self.metrics = metrics
        self.gpus = gpus or GpuInventory()    # deviceIds must name one of these

    async def _save_snapshot(self, failure: str,
                             undo: Callable[[], Awaitable[Any]] | None = None) -> None:
        """Persist before answering 2xx (SnapshotStore.save_change: 500 when it cannot)."""
        await self.snapshots.save_change(self.registry, failure, undo)

    def require_model_api(self) -> None:
        """Register and unregister answer 405 while the model API is off (SPEC 5.3)."""
        if not self.config.model_api_enabled:
            # TorchServe's words, which its clients compare; the log says what to change
            logger.warning("a register or unregister was refused: the model API is off "
                           "(enable_model_api=true turns it on)")
            raise MethodNotAllowed("Requested method is not allowed, please refer to API "
                                   "document.")

    # ---- register --------------------------------------------------------------------------

    async def register(self, req: RegisterRequest) -> Outcome:
        mv = await self._add_version(req)
        await self._save_snapshot(f'Model "{mv.name}" Version: {mv.version} not registered, as '
                                  "the change could not be saved", lambda: self._remove(mv))
        return await self._start_workers(mv, req.synchronous)

    async def restore(self, req: RegisterRequest) -> ModelVersion:
        """Re-register a version from a snapshot and start its workers without waiting: the
        daemon waits for every restored version together."""
        mv = await self._add_version(req)
        self.supervisor.scale(mv)
        return mv

    async def _add_version(self, req: RegisterRequest) -> ModelVersion:
        """Validate, fetch and register a version (no workers yet), in TorchServe's order."""
        if req.url is None:
            raise BadRequest("Parameter url is required.")
        if req.runtime is not None and req.runtime not in VALID_RUNTIMES:
            raise BadRequest(f"Invalid RuntimeType value: {req.runtime}")
        check_parameters(req)
        if req.initial_workers is not None:
            self.check_worker_limit(None, max(req.initial_workers, req.max_workers or 0))
        prepared = await self._prepare_archive(req)
        mv = None
        try:
            mv = self._new_version(req, prepared)
            self.check_worker_limit(None, mv.settings.max_workers)
            self.registry.check_absent(mv.name, mv.version)
            # a key that would change what the answers mean and is not implemented: 400
            check_config(mv.name, mv.version, mv.yaml_config, mv.settings)
            await self._install_requirements(mv)
            self.registry.add(mv)   # from here the Supervisor may start its workers
        except BaseException:
            await asyncio.to_thread(archives.remove_prepared, _disposable(req, prepared))
            await asyncio.to_thread(remove_installed, mv.deps_dir if mv else None)
            await asyncio.to_thread(remove_compile_cache, mv.compile_cache_dir if mv else None)
            raise
        logger.info("registered %s %s from %s", mv.name, mv.version, req.url)
        warn_ignored_keys(mv.name, mv.version, mv.yaml_config)
        return mv

    async def _prepare_archive(self, req: RegisterRequest) -> archives.PreparedArchive:
        assert req.url is not None   # register refused a request without one
        if req.prepared is not None:   # a workflow's function node: the workflow's directory
            return req.prepared
        if req.downloaded_copy is None:
            return await asyncio.to_thread(
                archives.prepare_archive, req.url, model_store=self._model_store(),
                extract_root=self.extract_root,
                allowed_urls=list(self.config.effective_allowed_urls), s3_sse_kms=req.s3_sse_kms,
                max_size=self.config.max_unpacked_archive_size)
        # The copy is a plain model-store entry: read as one, it is neither fetched nor checked
        # against allowed_urls (``url`` may no longer be allowed, the download was).
        copy = await asyncio.to_thread(
            archives.prepare_archive, req.downloaded_copy, model_store=self._model_store(),
            extract_root=self.extract_root, allowed_urls=[],
            max_size=self.config.max_unpacked_archive_size)
        return dataclasses.replace(copy, downloaded=True)

    async def _install_requirements(self, mv: ModelVersion) -> None:
        requirements = mv.manifest.get("model", {}).get("requirementsFile")
        if requirements and self.config.install_py_dep_per_model:
            mv.deps_dir = await asyncio.to_thread(install_requirements, Path(mv.model_dir),
                                                  requirements, self.extract_root, mv.name)
        elif requirements:
            logger.warning("model %s %s has a requirements file but install_py_dep_per_model "
                           "is off: its packages must be in torchd's environment", mv.name,
                           mv.version)

    def _compile_cache_dir(self) -> Path | None:
        """A new version's own compiler cache (its workers create it), unless the daemon was
        given TORCHINDUCTOR_CACHE_DIR, which its workers inherit."""
        if self.config.torchinductor_cache_dir:
            return None
        return self.extract_root / COMPILE_CACHES / uuid.uuid4().hex

    def _model_store(self) -> Path:
        if self.config.model_store is None:
            raise BadRequest("No model_store is configured")
        return self.config.model_store

    def _new_version(self, req: RegisterRequest, prepared: Any) -> ModelVersion:
        model = prepared.manifest.get("model", {})
        name = req.model_name or model.get("modelName")
        if not name:
            raise BadRequest("Parameter model_name is required (the manifest has no modelName)")
        check_name("model name", name)
        version = str(model.get("modelVersion") or "1.0")
        check_name("model version", version)
        handler = req.handler or model.get("handler") or ""
        if not handler:
            raise BadRequest("No handler: the manifest has none and the request gave none")
        settings = self._settings(req, prepared.model_yaml_config, name, version)
        queue = JobQueue(settings.job_queue_size)
        return ModelVersion(name=name, version=version, url=req.url or "", handler=handler,
                            runtime=req.runtime or prepared.manifest.get("runtime", "python"),
                            archive=prepared, settings=settings, queue=queue,
                            loaded_at_startup=req.loaded_at_startup,
                            compile_cache_dir=self._compile_cache_dir(),
                            workflow=req.workflow, listed=req.listed)

    def _settings(self, req: RegisterRequest, yaml_config: dict, name: str,
                  version: str) -> ModelSettings:
        """Request parameters > model-config.yaml > config.properties `models` > defaults."""
        json_settings = self.config.model_settings(name, version)
        if req.default_workers is not None:   # a startup model's: under the YAML and the JSON
            json_settings = {MIN_WORKERS_KEY: req.default_workers, **json_settings}
        device_type, device_ids = device_settings(name, yaml_config, json_settings, self.gpus.ids)
        layers = Layers(explicit_values(req), yaml_config, json_settings)
        return resolve_settings(layers, self.config, device_type=device_type,
                                device_ids=device_ids)

    async def _start_workers(self, mv: ModelVersion, synchronous: bool) -> Outcome:
        head = f'Model "{mv.name}" Version: {mv.version} registered with'
        self.supervisor.scale(mv)
        if mv.settings.min_workers == 0:
            return Outcome(200, f"{head} 0 initial workers. Use scale workers API to add "
                                "workers for the model.")
        if not synchronous:
            return Outcome(202, "Processing worker updates...")
        try:
            ready = await self._await_workers(mv)
        except InternalServerError:
            if self.registry.holds(mv):
                await self._remove(mv)   # TorchServe unregisters a model whose workers fail
                # register saved the version before its workers started: that snapshot must
                # not outlive the rollback, or a restart would bring back what failed. (If it
                # cannot be saved, the workers' failure is still the answer.)
                with contextlib.suppress(InternalServerError):
                    await self._save_snapshot(f"{mv.name} {mv.version} unregistered after its "
                                              "workers failed, but the change was not saved")
            raise
        if ready is None:
            return Outcome(206, "Workers scaling in progress...")
        return Outcome(200, f"{head} {ready} initial workers")

    async def _await_workers(self, mv: ModelVersion) -> int | None:
        """For synchronous calls: the target count once that many are READY, None when only
        some came up; InternalServerError (with the worker's cause) when none could start."""
        outcome = await self.supervisor.wait_for_workers(
            mv, mv.settings.startup_timeout + SYNC_SLACK)
        if not self.registry.holds(mv):
            # unregistered by another call meanwhile: nothing is scaling any more
            raise _start_failure(mv, "the model was unregistered while its workers were "
                                     "starting")
        if outcome.ready >= outcome.target:
            return outcome.target
        if outcome.error and outcome.ready == 0:
            raise _start_failure(mv, outcome.error)
        return None

    # ---- scale -----------------------------------------------------------------------------

    def check_worker_limit(self, mv: ModelVersion | None, wanted: int) -> None:
        """max_workers bounds the workers of all models together (a fuzzer hangs TorchServe)."""
        others = sum(max(v.settings.max_workers, v.settings.min_workers)
                     for v in self.registry.all_versions() if v is not mv)
        limit = self.config.max_workers
        if wanted + others > limit:
            raise BadRequest(f"Requested workers exceed the limit of max_workers={limit} "
                             f"(already allotted to other models: {others})")

    async def scale(self, name: str, version: str | None, min_worker: int | None,
                    max_worker: int | None, synchronous: bool, timeout: int) -> Outcome:
        min_worker = 1 if min_worker is None else min_worker
        max_worker = min_worker if max_worker is None else max_worker
        # TorchServe checks the numbers before it looks the model up; clients see that order.
        if max_worker < min_worker:
            raise BadRequest("max_worker cannot be less than min_worker.")
        if min_worker < 0:
            raise BadRequest("min_worker and max_worker must not be negative.")
        check_scale_timeout(timeout)
        mv = self.registry.get(name, version)
        self.check_worker_limit(mv, max_worker)
        before = mv.settings

        async def undo() -> None:
            self.supervisor.update_settings(mv, stop_timeout=timeout,
                                            min_workers=before.min_workers,
                                            max_workers=before.max_workers)

        # The version's range, changed through the Supervisor, which brings the workers to it.
        self.supervisor.update_settings(mv, stop_timeout=timeout, min_workers=min_worker,
                                        max_workers=max_worker)
        await self._save_snapshot(f"Workers not scaled for model: {name}, as the change could "
                                  "not be saved", undo)
        if not synchronous:
            return Outcome(202, "Processing worker updates...")
        count = await self._await_workers(mv)
        if count is None:
            return Outcome(206, "Workers scaling in progress...")
        where = f", version: {version}" if version else ""
        return Outcome(200, f"Workers scaled to {count} for model: {name}{where}")

    # ---- unregister ------------------------------------------------------------------------

    async def unregister(self, name: str, version: str | None) -> Outcome:
        mv = self.registry.check_removable(name, version)
        await self._remove(mv)
        # the workers are gone: nothing to undo, but the answer must not promise it will last
        await self._save_snapshot(f'Model "{name}" unregistered, but a restart would register '
                                  "it again, as the change could not be saved")
        logger.info("unregistered %s %s", mv.name, mv.version)
        return Outcome(200, f'Model "{name}" unregistered')

    async def _remove(self, mv: ModelVersion) -> None:
        """Forget the version: queued jobs get 503 now, in-flight batches finish (bounded)."""
        self.registry.remove(mv)
        # close, not just fail_all: a stopping worker gives back the batch it was filling, and
        # nobody would serve it any more.
        mv.queue.close(ServiceUnavailable(f'Model "{mv.name}" was unregistered'))
        await self.supervisor.drain(mv, self.config.unregister_model_timeout)
        await asyncio.to_thread(archives.remove_prepared, mv.archive)
        await asyncio.to_thread(remove_installed, mv.deps_dir)
        await asyncio.to_thread(remove_compile_cache, mv.compile_cache_dir)
        self._forget_metrics(mv)

    def _forget_metrics(self, mv: ModelVersion) -> None:
        """Drop the version's series, last: after the drain, so its workers' final updates
        cannot put them back. Not if the same version was registered again meanwhile: the
        series are that one's now."""
        try:
            self.registry.get(mv.name, mv.version)
        except (ModelNotFound, ModelVersionNotFound):
            self.metrics.forget_model(mv.name, mv.version)

    # ---- read-only -------------------------------------------------------------------------

    def describe(self, name: str, version: str | None) -> list[dict[str, Any]]:
        if version == "all":
            versions = self.registry.versions(name)
        else:
            versions = [self.registry.get(name, version)]
        return [self.describe_version(mv) for mv in versions]

    async def describe_customized(self, name: str, version: str | None,
                                  customized: bool) -> list[dict[str, Any]]:
        """``describe``, plus each handler's describe_handle() result when ``customized``."""
        described = self.describe(name, version)
        if customized:
            for doc in described:
                mv = self.registry.get(doc["modelName"], doc["modelVersion"])
                doc["customizedMetadata"] = await self.supervisor.customized_metadata(mv)
        return described

    def describe_version(self, mv: ModelVersion) -> dict[str, Any]:
        """One element of describe (REST and gRPC); the settings as the table says."""
        return {"modelName": mv.name, "modelVersion": mv.version, "modelUrl": mv.url,
                "engine": "Torch", "runtime": mv.runtime, **describe_entry(mv.settings),
                # TorchServe 0.12's other fields: torchd runs no model parallel or in a venv of
                # its own (model_config.py refuses or ignores those keys)
                "parallelType": "", "parallelLevel": 0, "useVenv": False,
                "stateful": mv.settings.sequence_batching,
                "loadedAtStartup": mv.loaded_at_startup,
                "ignoredConfigKeys": ignored_config_keys(mv.yaml_config),
                "workers": self.supervisor.describe_workers(mv),
                **self.supervisor.describe_template(mv),
                "jobQueueStatus": self._queue_status(mv)}

    @staticmethod
    def _queue_status(mv: ModelVersion) -> dict[str, Any]:
        status = {"remainingCapacity": mv.queue.remaining_capacity,
                  "pendingRequests": mv.queue.depth}
        if mv.settings.sequence_batching:   # torchd's: the sequences open now, and their queues
            status["openSequences"] = len(mv.queue.sequences)
            status["sequenceRequests"] = mv.queue.sequences.depth
        return status

    def list_models(self, limit: int, offset: int) -> dict[str, Any]:
        defaults = [mv for mv in self.registry.defaults() if mv.listed]
        return list_page(defaults, limit, offset, "models",
                         lambda mv: {"modelName": mv.name, "modelUrl": mv.url})

    async def set_default(self, name: str, version: str) -> Outcome:
        before = self.registry.get(name).version

        async def undo() -> None:
            self.registry.set_default(name, before)

        self.registry.set_default(name, version)
        await self._save_snapshot(f'Default version not updated for model "{name}", as the '
                                  "change could not be saved", undo)
        return Outcome(200, f'Default version successfully updated for model "{name}" to '
                            f'"{version}"')


def _disposable(req: RegisterRequest, prepared: archives.PreparedArchive,
                ) -> archives.PreparedArchive:
    """What a failed registration deletes: never a restored download, which the snapshot still
    names (the start fails, saying to put the archive back or edit that snapshot)."""
    if req.downloaded_copy is None:
        return prepared
    return dataclasses.replace(prepared, downloaded=False)


class WorkersFailed(InternalServerError):
    """A registration's workers could not start (the version is unregistered again)."""


def _start_failure(mv: ModelVersion, cause: str) -> InternalServerError:
    return WorkersFailed(f"Failed to start workers for model {mv.name} version: "
                         f"{mv.version}: {cause}")


def remove_compile_cache(directory: Path | None) -> None:
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)
