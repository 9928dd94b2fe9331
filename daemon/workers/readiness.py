"""Readiness: one rule for a model version, and the daemon's answers built on it.

A model version is ready when its minWorkers are READY, and at least one is
(:func:`version_ready`): a version no READY worker could answer is never ready. Every route that
asks about one version asks this, through ``Supervisor.ready``: OIP v2
``/v2/models/{m}[/versions/{v}]/ready`` and gRPC ModelReady (daemon/models/oip.py), KServe v1
``/v1/models/{m}`` (daemon/http/compat.py).

The daemon's answers (:class:`Health`) ask the same rule of every model's default version that
asks for workers (minWorkers > 0). A version scaled to minWorkers 0 asks for none, so it never
holds the daemon back: a model an operator scaled to zero answers 503 by design, and taking
the replica out of its Service for it would take every other model it serves out too. So, as
SPEC 2 says, "every model's default version has minWorkers READY":

- ready (``/v2/health/ready``, gRPC ServerReady; a Kubernetes readiness probe): each such
  version is ready, every declared startup model is registered, and the daemon is not draining;
- healthy (``/ping``, gRPC Ping; TorchServe's meaning): each such version is ready, or
  below its minWorkers for less than RECOVERY_GRACE (its workers starting, or restarting after
  crashes) with no worker FAILED (``Supervisor.healthy``), and the daemon is not draining. A
  model being registered or scaled up leaves the server healthy, as in TorchServe (a starting
  worker counts as healthy there): a liveness probe must not restart the server for it.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from daemon.workers.states import WorkerState


def version_ready(ready_workers: int, min_workers: int) -> bool:
    """The rule: ``min_workers`` READY, and at least one."""
    return ready_workers >= max(1, min_workers)


def free_workers(handles: Iterable[Any], queue: Any) -> int:
    """How many more requests workers are free to take at once (TorchServe's job tickets,
    ``useJobTicket``): READY workers with no batch in flight, less the one filling a batch
    (one worker at a time does), less the requests already waiting for them."""
    idle = sum(1 for h in handles if h.state is WorkerState.READY and not h.busy)
    return idle - (1 if queue.gathering else 0) - queue.depth


class Health:
    """The daemon's readiness and health, from the registry's default versions and the
    Supervisor's view of their workers."""

    def __init__(self, registry: Any, supervisor: Any) -> None:
        self.registry = registry
        self.supervisor = supervisor
        self.draining = False
        self.expected: set[str] = set()   # declared models that failed to load at start

    def expect(self, names: Iterable[str]) -> None:
        """Readiness waits until a model of each of these names is registered."""
        self.expected.update(names)

    def awaited(self) -> list[Any]:
        """The default versions the daemon's answers wait for: those that ask for workers."""
        return [mv for mv in self.registry.defaults() if mv.settings.min_workers > 0]

    def healthy(self) -> bool:
        return not self.draining and all(self.supervisor.healthy(mv) for mv in self.awaited())

    def ready(self) -> bool:
        if self.draining:
            return False
        if self.expected - set(self.registry.names()):
            return False
        return all(self.supervisor.ready(mv) for mv in self.awaited())
