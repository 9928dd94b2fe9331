"""How many torch threads each worker runs, so that workers never oversubscribe the CPUs.

torch sizes its intra- and inter-op pools for every CPU of the host. N workers that each do
that run N times as many busy threads as there are CPUs and slow one another down (measured:
two resnet18 workers on 16 cores, 16+16 threads each, each fell from 1,218 img/s alone to ~113).
Each worker gets its model's ``workerThreads`` when set, else an equal share of the CPUs torchd
may use (cgroup quota and affinity, see daemon.osutil.usable_cpus): at least 1.

When workers come and go, the share changes. A new worker gets the new share in its LOAD
frame. Running workers are told with a THREADS frame (no restart: a recycled worker would drop
its warm state and the requests queued behind it); torch can change a running process's
intra-op threads but not its inter-op pool, which keeps the count it started with.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

from daemon.workers.handle import WorkerHandle
from daemon.workers.states import LIVE_STATES, WorkerState
from protocol import messages

logger = logging.getLogger(__name__)


class ThreadSplit:
    def __init__(self, cpus: int) -> None:
        self.cpus = max(1, cpus)

    def share(self, running: int) -> int:
        """Threads for each of ``running`` workers without a count of their own."""
        return max(1, self.cpus // max(1, running))

    def rebalance(self, handles: Iterable[WorkerHandle]) -> None:
        """Give each worker not started yet its count, and tell each READY worker on the
        share whose count is no longer the share. Called after the Supervisor spawned a
        reconcile's workers (all of them counted) and before their runners first run."""
        handles = list(handles)
        share = self.share(sum(1 for h in handles if h.state in LIVE_STATES))
        for handle in handles:
            fixed = handle.mv.settings.worker_threads
            if handle.threads == 0 and handle.state is WorkerState.STARTING:
                handle.threads = fixed if fixed > 0 else share
                continue
            if handle.state is not WorkerState.READY or handle.conn is None \
                    or fixed > 0 or handle.threads == share:
                continue
            try:
                handle.conn.send(messages.threads(share))
            except (ConnectionError, OSError):
                continue   # its runner reports the lost connection
            logger.info("worker %s: torch threads %d -> %d", handle.id, handle.threads, share)
            handle.threads = share
