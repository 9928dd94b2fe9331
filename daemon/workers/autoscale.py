"""The autoscaler's decision for one model version, as a pure function of what it sees."""
from __future__ import annotations

from collections.abc import Sequence

from daemon.workers.records import VersionRecord


def autoscale_step(record: VersionRecord, min_workers: int, max_workers: int, queue_depth: int,
                   idle_since: Sequence[float | None], now: float, up_delay: float,
                   down_delay: float) -> int:
    """+1, -1 or 0 workers. ``idle_since`` has one entry per READY worker (None: busy).

    Up: the queue has held at least one job per READY worker for ``up_delay`` seconds. Down:
    nothing is queued and some worker has idled ``down_delay`` seconds. Never outside
    [min, max]. Updates ``record.deep_since`` (the only state the decision keeps).
    """
    if max_workers <= min_workers:
        return 0
    deep = queue_depth >= max(1, len(idle_since))
    since = (record.deep_since or now) if deep else None   # None exactly when not deep
    record.deep_since = since
    if since is not None and now - since >= up_delay and record.target < max_workers:
        record.deep_since = now   # the next step up waits a whole delay again
        return +1
    if not deep and record.target > min_workers and queue_depth == 0 and any(
            since is not None and now - since >= down_delay for since in idle_since):
        return -1
    return 0
