"""What the worker table says, read-only: the Supervisor's answers to the rest of the daemon
(which handles a version has, whether one can take a request, readiness and health).

A base of the Supervisor, which alone changes the table (``workers``, ``_by_version``,
``records``): these only read it, for each request (``can_serve``, ``free_workers``), for the
probes and for describe (its worker rows, and the handler's own metadata asked of a worker).
"""
from __future__ import annotations

import abc
from collections.abc import Callable

from typing import Any

from daemon.errors import ServiceUnavailable
from daemon.gpus.placement import GpuPlacement
from daemon.models.registry import ModelVersion
from daemon.workers.handle import WorkerHandle
from daemon.workers.launcher import ProcessOps
from daemon.workers.probes import describe_row, handler_metadata
from daemon.workers.readiness import free_workers, version_ready
from daemon.workers.records import VersionRecord
from daemon.workers.states import LIVE_STATES, WorkerState

S = WorkerState


class WorkerTableViews(abc.ABC):
    """Read-only views of the table; the Supervisor owns the fields they read."""

    _by_version: dict[ModelVersion, dict[str, WorkerHandle]]
    clock: Callable[[], float]
    ops: ProcessOps
    placement: GpuPlacement

    @abc.abstractmethod
    def record(self, mv: ModelVersion) -> VersionRecord:
        """The version's record (the Supervisor's: it creates them)."""

    def handles(self, mv: ModelVersion) -> list[WorkerHandle]:
        return list(self._by_version.get(mv, {}).values())

    def counts(self, mv: ModelVersion) -> dict[str, int]:
        counts = {state.value: 0 for state in WorkerState}
        for handle in self.handles(mv):
            counts[handle.state.value] += 1
        return counts

    def can_serve(self, mv: ModelVersion) -> bool:
        """Some worker is READY or on its way (starting, or restarting after a crash)."""
        return any(h.state in LIVE_STATES for h in self._by_version.get(mv, {}).values())

    def free_workers(self, mv: ModelVersion) -> int:
        """useJobTicket: see daemon/workers/readiness.py."""
        return free_workers(self._by_version.get(mv, {}).values(), mv.queue)

    def ready_count(self, mv: ModelVersion) -> int:
        return sum(1 for h in self.handles(mv) if h.state is S.READY)

    def ready(self, mv: ModelVersion) -> bool:
        """The readiness rule (daemon/workers/readiness.py) on ``mv``'s READY workers."""
        return version_ready(self.ready_count(mv), mv.settings.min_workers)

    def healthy(self, mv: ModelVersion) -> bool:
        """Ready, or starting or recovering from crashes (briefly, with no worker FAILED):
        /ping's view."""
        if self.ready(mv):
            return True
        if any(h.state is S.FAILED for h in self.handles(mv)):
            return False
        return self.record(mv).recovering(self.clock())

    def describe_workers(self, mv: ModelVersion) -> list[dict[str, Any]]:
        """describe's ``workers``: a fresh row per worker, RSS read now."""
        return [describe_row(h, self.ops.rss(h.pid) if h.pid else 0, self.placement.describe(h))
                for h in sorted(self.handles(mv), key=lambda h: int(h.id))]

    async def customized_metadata(self, mv: ModelVersion) -> Any:
        """The handler's describe_handle() result, asked of one READY worker."""
        for handle in self.handles(mv):
            if handle.state is S.READY and handle.conn is not None:
                return await handler_metadata(handle)
        raise ServiceUnavailable(f'Model "{mv.name}" has no worker to serve the describe request')
