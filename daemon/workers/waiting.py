"""What a synchronous register or scale call waits for: its workers READY, or a start failure."""
from __future__ import annotations

from typing import TYPE_CHECKING

from daemon.models.registry import ModelVersion
from daemon.workers.records import ScaleOutcome
from daemon.workers.states import WorkerState

if TYPE_CHECKING:
    from daemon.workers.supervisor import Supervisor

S = WorkerState


async def wait_for_workers(supervisor: Supervisor, mv: ModelVersion,
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
