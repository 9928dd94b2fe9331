"""The worker state machine: states, legal transitions and the restart backoff policy."""
from __future__ import annotations

import enum


class WorkerState(str, enum.Enum):
    STARTING = "STARTING"   # process spawned, handler loading
    READY = "READY"         # loaded; serving batches (one at a time)
    STOPPING = "STOPPING"   # finishing its in-flight batch, then exits
    STOPPED = "STOPPED"     # gone; forgotten by the supervisor right after
    BACKOFF = "BACKOFF"     # died or failed to start; a replacement is due at retry_at
    FAILED = "FAILED"       # failed to start too often, or its GPU vanished; until a scale call


S = WorkerState
TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    S.STARTING: frozenset({S.READY, S.STOPPING, S.STOPPED, S.BACKOFF, S.FAILED}),
    S.READY: frozenset({S.STOPPING, S.STOPPED, S.BACKOFF, S.FAILED}),   # FAILED: GPU gone
    S.STOPPING: frozenset({S.STOPPED}),
    S.BACKOFF: frozenset({S.STOPPED}),
    S.FAILED: frozenset({S.STOPPED}),
    S.STOPPED: frozenset(),
}
# States that occupy one of the model's worker slots (a replacement is not spawned beside them).
SLOT_STATES = frozenset({S.STARTING, S.READY, S.BACKOFF, S.FAILED})
# States of a worker that serves or soon will (starting, or restarting after a crash).
LIVE_STATES = frozenset({S.STARTING, S.READY, S.BACKOFF})


class IllegalTransition(RuntimeError):
    pass


def check_transition(current: WorkerState, new: WorkerState) -> None:
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(f"worker cannot go from {current.value} to {new.value}")


class RestartPolicy:
    """Exponential backoff between restarts, supervisord-style.

    The first restart after a crash is immediate, then 1, 2, 4 ... seconds, capped. A worker that
    stayed READY for ``reset_after`` seconds has proven itself and resets the count. Start failures
    (never reached READY) are counted apart: ``max_start_failures`` in a row end in FAILED.
    """

    def __init__(self, cap: float = 30.0, reset_after: float = 30.0,
                 max_start_failures: int = 3) -> None:
        self.cap = cap
        self.reset_after = reset_after
        self.max_start_failures = max_start_failures

    def delay(self, failures: int) -> float:
        if failures <= 1:
            return 0.0
        return min(self.cap, 2.0 ** (failures - 2))

    def gives_up(self, start_failures: int) -> bool:
        return start_failures >= self.max_start_failures
