"""The workflow table and what the workflow API does with it: register (every node or none),
unregister, describe, list, predict, and the workflows' part of the snapshots.

The nodes' model versions are the ModelManager's like any other (registered, scaled, described,
unregistered through it); this module owns only which workflows exist and which models are
their nodes. TorchServe's answers, messages and order throughout, except where marked FIX.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.config.model_settings import request_values, snapshot_entry
from daemon.config.settings import Config
from daemon.control.manager import ModelManager, Outcome, WorkersFailed
from daemon.control.paging import list_page
from daemon.errors import BadRequest, Conflict, InternalServerError, TorchdError
from daemon.models.call import Predictions
from daemon.models.registry import Registry
from daemon.models.requests import RegisterRequest
from daemon.models.snapshots import SnapshotStore
from daemon.workflows.archive import PreparedWorkflow, prepare_workflow, remove_workflow_files
from daemon.workflows.errors import WorkflowFailed, not_found
from daemon.workflows.executor import DagRun, Headers, Parameters
from daemon.workflows.spec import Node, model_name

logger = logging.getLogger(__name__)
SNAPSHOT_KEY = "workflows"


@dataclass
class WorkflowRequest:
    """POST /workflows parameters (or a snapshot entry being restored)."""

    url: str | None
    workflow_name: str | None = None
    response_timeout: int | None = None
    startup_timeout: int | None = None
    s3_sse_kms: bool = False
    # Restoring a snapshot: the store file ``url`` was downloaded to, and each node's saved
    # settings (by node); the nodes' workers start without being waited for.
    downloaded_copy: str | None = None
    saved_nodes: dict[str, Any] | None = None


@dataclass
class Workflow:
    request: WorkflowRequest
    prepared: PreparedWorkflow
    models: dict[str, str]        # node -> the model version serving it

    @property
    def name(self) -> str:
        return self.prepared.name


@dataclass
class NodeResult:
    model: str
    registered: bool              # its version is ours now (to roll back on failure)
    failure: str | None = None    # TorchServe's words for what went wrong


class WorkflowManager:
    def __init__(self, config: Config, registry: Registry, models: ModelManager,
                 predictions: Predictions, snapshots: SnapshotStore, extract_root: Path) -> None:
        self.config = config
        self.registry = registry
        self.models = models
        self.predictions = predictions
        self.snapshots = snapshots
        self.extract_root = extract_root
        self._workflows: dict[str, Workflow] = {}
        self._registering: set[str] = set()   # names whose nodes are being registered
        snapshots.sections[SNAPSHOT_KEY] = self.capture

    # ---- register --------------------------------------------------------------------------

    async def register(self, req: WorkflowRequest) -> Outcome:
        """TorchServe registers every node synchronously, with the node's max-workers; a node
        that fails rolls back the whole workflow (500, each node's failure listed)."""
        self.models.require_model_api()   # FIX: TorchServe leaves workflows open
        wf = await self._prepare(req)
        try:
            await self._register_nodes(wf, restoring=False)
            self._workflows[wf.name] = wf
        except BaseException:
            await asyncio.to_thread(remove_workflow_files, wf.prepared)
            raise
        finally:
            self._registering.discard(wf.name)
        await self.snapshots.save_change(
            self.registry, f"Workflow {wf.name} not registered, as the change could not be "
            "saved", lambda: self._remove(wf))
        logger.info("registered workflow %s from %s: %s", wf.name, wf.prepared.url,
                    ", ".join(wf.models.values()))
        return Outcome(200, f"Workflow {wf.name} has been registered and scaled successfully.")

    async def _prepare(self, req: WorkflowRequest) -> Workflow:
        """The archive read and its name reserved (409 if taken)."""
        if req.url is None:
            raise BadRequest("Parameter url is required.")
        store = self.config.effective_workflow_store
        if store is None:
            raise BadRequest("No workflow_store (or model_store) is configured")
        prepared = await asyncio.to_thread(
            prepare_workflow, req.url, workflow_store=store, extract_root=self.extract_root,
            allowed_urls=list(self.config.effective_allowed_urls), s3_sse_kms=req.s3_sse_kms,
            name=req.workflow_name, downloaded_copy=req.downloaded_copy)
        if prepared.name in self._workflows or prepared.name in self._registering:
            await asyncio.to_thread(remove_workflow_files, prepared,
                                    keep_download=req.downloaded_copy is not None)
            raise Conflict(f"Workflow {prepared.name} is already registered.")
        self._registering.add(prepared.name)
        models = {name: model_name(prepared.name, name) for name in prepared.spec.nodes}
        return Workflow(req, prepared, models)

    async def _register_nodes(self, wf: Workflow, restoring: bool) -> None:
        """Every node at once (TorchServe registers four at a time); all or none stay."""
        nodes = wf.prepared.spec.nodes.values()
        results = await asyncio.gather(*(self._register_node(wf, node, restoring)
                                         for node in nodes))
        failures = [r.failure for r in results if r.failure is not None]
        if not failures:
            return
        if not restoring:   # a failed restore stops the start, which forgets them all
            await self._remove_models([r.model for r in results if r.registered])
        raise WorkflowFailed(f"Workflow {wf.name} has failed to register. Failures: "
                             f"[{', '.join(failures)}]")

    async def _register_node(self, wf: Workflow, node: Node, restoring: bool) -> NodeResult:
        model = wf.models[node.name]
        req = self._node_request(wf, node, model)
        try:
            if restoring:
                await self.models.restore(req)
                return NodeResult(model, registered=True)
            outcome = await self.models.register(req)
        except WorkersFailed as exc:     # TorchServe reports these without the node's name
            return NodeResult(model, registered=False, failure=exc.message)
        except TorchdError as exc:
            return NodeResult(model, registered=False, failure=(
                f"Workflow Node {model} failed to register. Details: {exc.message}"))
        failure = None if outcome.status == 200 else outcome.message
        return NodeResult(model, registered=True, failure=failure)

    def _node_request(self, wf: Workflow, node: Node, model: str) -> RegisterRequest:
        """A node's registration as TorchServe's: its batch settings, and its max-workers
        workers to start (and keep); a snapshot's saved settings win."""
        s, req = node.settings, wf.request
        values: dict[str, Any] = {
            "batch_size": s.batch_size, "max_batch_delay": s.max_batch_delay,
            "initial_workers": s.max_workers, "max_workers": s.max_workers,
            "response_timeout": req.response_timeout, "startup_timeout": req.startup_timeout}
        saved = (req.saved_nodes or {}).get(node.name)
        if isinstance(saved, dict):
            values.update(request_values(saved))
        restoring = req.saved_nodes is not None
        if node.is_function:
            return RegisterRequest(
                url="", model_name=model, workflow=wf.name, listed=False,
                prepared=wf.prepared.function_archive(model, node.name),
                synchronous=not restoring, **values)
        assert node.url is not None
        return RegisterRequest(url=node.url, model_name=model, workflow=wf.name,
                               s3_sse_kms=req.s3_sse_kms, synchronous=not restoring, **values)

    # ---- unregister ------------------------------------------------------------------------

    async def unregister(self, name: str) -> Outcome:
        self.models.require_model_api()
        wf = self.get(name)
        failures = await self._remove(wf)
        await self.snapshots.save_change(
            self.registry, f'Workflow "{name}" unregistered, but a restart would register it '
            "again, as the change could not be saved")
        if failures:
            raise InternalServerError(f"Error while unregistering the workflow {name}. "
                                      f"Details: [{', '.join(failures)}]")
        logger.info("unregistered workflow %s", name)
        return Outcome(200, f'Workflow "{name}" unregistered')

    async def _remove(self, wf: Workflow) -> list[str]:
        """The workflow, its node models and its files gone; the nodes' failures, in words."""
        del self._workflows[wf.name]
        failures = await self._remove_models(list(wf.models.values()))
        await asyncio.to_thread(remove_workflow_files, wf.prepared)
        return failures

    async def _remove_models(self, models: list[str]) -> list[str]:
        """Unregister these node models (in-flight requests finish, as for any model); the
        failures, in words. A node already unregistered by hand is no failure."""
        async def remove(model: str) -> str | None:
            try:
                self.registry.get(model)
            except TorchdError:
                logger.warning("workflow node %s was unregistered already", model)
                return None
            try:
                await self.models.unregister(model, None)
            except TorchdError as exc:
                return f"Error while unregistering workflow node {model}: {exc.message}"
            return None

        results = await asyncio.gather(*(remove(model) for model in models))
        return [failure for failure in results if failure is not None]

    # ---- read-only -------------------------------------------------------------------------

    def get(self, name: str) -> Workflow:
        wf = self._workflows.get(name)
        if wf is None:
            raise not_found(name)
        return wf

    def describe(self, name: str) -> list[dict[str, Any]]:
        """TorchServe's describe: the global settings of the spec, and its dag as it shows
        it."""
        wf = self.get(name)
        spec = wf.prepared.spec
        return [{"workflowName": name, "workflowUrl": wf.prepared.url,
                 "minWorkers": spec.settings.min_workers,
                 "maxWorkers": spec.settings.max_workers,
                 "batchSize": spec.settings.batch_size,
                 "maxBatchDelay": spec.settings.max_batch_delay,
                 "workflowDag": spec.dag_text}]

    def list_workflows(self, limit: int, offset: int) -> dict[str, Any]:
        """As GET /models pages, sorted by name."""
        return list_page(self.names(), limit, offset, "workflows",
                         lambda name: {"workflowName": name,
                                       "workflowUrl": self._workflows[name].prepared.url})

    def names(self) -> list[str]:
        return sorted(self._workflows)

    # ---- predict ---------------------------------------------------------------------------

    async def predict(self, name: str, headers: Headers,
                      params: Parameters) -> list[tuple[str, bytes]]:
        """The leaves' outputs for one request (executor.py)."""
        wf = self.get(name)
        run = DagRun(wf.prepared.spec, wf.models, self.predictions.start, headers)
        return await run.run(params)

    # ---- snapshots -------------------------------------------------------------------------

    def capture(self) -> dict[str, Any]:
        """The workflows as a snapshot holds them: how each was registered, and each node's
        settings as they are now (scaled since, say). FIX: TorchServe saves no workflows."""
        return {name: self._entry(wf) for name, wf in sorted(self._workflows.items())}

    def _entry(self, wf: Workflow) -> dict[str, Any]:
        nodes = {}
        for node, model in wf.models.items():
            try:
                nodes[node] = snapshot_entry(self.registry.get(model).settings)
            except TorchdError:
                continue   # unregistered by hand: the restore starts it as the spec says
        req = wf.request
        return {"url": wf.prepared.url, "responseTimeout": req.response_timeout,
                "startupTimeout": req.startup_timeout, "s3SseKms": req.s3_sse_kms,
                "downloaded": wf.prepared.downloaded, "source": str(wf.prepared.source),
                "nodes": nodes}

    async def restore(self, name: str, entry: Any) -> None:
        """Register a saved workflow again, its nodes as they were, without waiting for their
        workers (the daemon waits for every restored version together). KeyError, TypeError,
        ValueError for an entry that cannot be restored; TorchdError as a registration."""
        req = restore_request(name, entry)
        wf = await self._prepare(req)
        try:
            await self._register_nodes(wf, restoring=True)
            self._workflows[wf.name] = wf
        except BaseException:
            await asyncio.to_thread(remove_workflow_files, wf.prepared, keep_download=True)
            raise
        finally:
            self._registering.discard(wf.name)


def restore_request(name: str, entry: Any) -> WorkflowRequest:
    """The registration a saved workflow entry stands for."""
    if not isinstance(entry, dict):
        raise TypeError(f"a workflow entry must be an object, not {type(entry).__name__}")
    copy = None
    if entry.get("downloaded"):
        if not isinstance(entry.get("source"), str) or not entry["source"]:
            raise ValueError("a downloaded archive whose copy in the workflow store is not "
                             "named")
        copy = Path(entry["source"]).name
    nodes = entry.get("nodes", {})
    if not isinstance(nodes, dict):
        raise TypeError("nodes must be an object")
    return WorkflowRequest(url=str(entry["url"]), workflow_name=name,
                           response_timeout=_optional_int(entry.get("responseTimeout")),
                           startup_timeout=_optional_int(entry.get("startupTimeout")),
                           s3_sse_kms=bool(entry.get("s3SseKms")), downloaded_copy=copy,
                           saved_nodes=nodes)


def _optional_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, not {value!r}")
    return value
