"""Which worker a pid belongs to, and exit reports that arrive before the pid is known."""
from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

EARLY_EXITS_KEPT = 256      # exit reports for pids not tracked yet (or never: stale ones)
EARLY_EXIT_TTL = 10.0       # seconds such a report stays credible

W = TypeVar("W")


class PidTable(Generic[W]):
    """Maps pids to workers and hands each exit report to ``on_exit(worker, returncode)``.

    A worker can die before its spawn call has returned its pid (the zygote sends SPAWNED and
    EXITED back to back): such a report is kept until the pid is tracked. Late reports about
    forgotten workers land there too, hence the TTL (pids get reused) and the bound.
    """

    def __init__(self, clock: Callable[[], float],
                 on_exit: Callable[[W, int], None]) -> None:
        self.clock = clock
        self.on_exit = on_exit
        self._workers: dict[int, W] = {}
        self._early: dict[int, tuple[int, float]] = {}   # pid -> (returncode, when)

    def track(self, pid: int, worker: W) -> None:
        self._workers[pid] = worker
        early = self._early.pop(pid, None)
        if early is not None and self.clock() - early[1] < EARLY_EXIT_TTL:
            self.exited(pid, early[0])

    def forget(self, pid: int) -> None:
        self._workers.pop(pid, None)

    def exited(self, pid: int, returncode: int) -> None:
        worker = self._workers.get(pid)
        if worker is not None:
            self.on_exit(worker, returncode)
            return
        self._early[pid] = (returncode, self.clock())
        while len(self._early) > EARLY_EXITS_KEPT:
            self._early.pop(next(iter(self._early)))
