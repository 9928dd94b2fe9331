"""What a synchronous register or scale call waits for: its workers READY, or a start failure."""
from __future__ import annotations

from collections.abc import Callable, Container
from typing import Protocol

from daemon.models.registry import ModelVersion
from daemon.workers.handle import WorkerHandle
from daemon.workers.records import ScaleOutcome, VersionRecord
from daemon.workers.states import WorkerState

S = WorkerState


class WorkerTable(Protocol):
    """What the wait reads of the Supervisor (its worker table, its clock, its wake-ups)."""

    @property
    def records(self) -> Container[ModelVersion]: ...

    @property
    def clock(self) -> Callable[[], float]: ...

    def record(self, mv: ModelVersion) -> VersionRecord: ...

    def handles(self, mv: ModelVersion) -> list[WorkerHandle]: ...

    async def changed(self, timeout: float) -> None: ...


async def wait_for_workers(supervisor: WorkerTable, mv: ModelVersion,
                           timeout: float) -> ScaleOutcome:
    """Until the target is READY, a start fails, or ``timeout``: for synchronous calls.

    After a failure it still waits for the other workers of the same start (the ones
    STARTING when the wait began), so "some came up" (206) is told from "none did" (500)
    whichever finishes first; their retries are not waited for.
    """
    record = supervisor.record(mv)
    failures_before = record.start_failures
    cohort = {h.id for h in supervisor.handles(mv) if h.state is S.STARTING}
    deadline = supervisor.clock() + timeout
    while True:
        handles = supervisor.handles(mv)
        ready = sum(1 for h in handles if h.state is S.READY and not h.retiring)
        stopping = any(h.state is S.STOPPING for h in handles)
        if ready >= record.target and not stopping:
            return ScaleOutcome(ready, record.target)
        if record.start_failures > failures_before and not any(
                h.id in cohort and h.state is S.STARTING for h in handles):
            return ScaleOutcome(ready, record.target, record.last_error)
        remaining = deadline - supervisor.clock()
        if remaining <= 0 or mv not in supervisor.records:
            return ScaleOutcome(ready, record.target, record.last_error)
        await supervisor.changed(min(remaining, 1.0))
