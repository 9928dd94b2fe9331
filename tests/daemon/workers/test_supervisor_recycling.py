"""The Supervisor's recycling with a fake clock and fake processes (supervisor_harness.py): a
worker past max_requests_per_worker or max_worker_rss is replaced before it stops, and a stop
does not wait for a slow spawn."""
from __future__ import annotations

import asyncio
import signal
from typing import Any

from tests.daemon.workers.supervisor_harness import (
    Harness,
    S,
    outcome,
    ready,
    scale,
    scenario,
    submit,
    until,
)


# ---- recycling -----------------------------------------------------------------------------

@scenario
async def test_recycled_worker_stops_only_once_its_replacement_is_ready(h: Harness) -> None:
    mv = h.model(max_requests_per_worker=2)
    scale(h, mv, 1, 1)
    (old,) = await ready(h, mv, 1)
    for _ in range(2):
        assert (await outcome(submit(mv)))[0] == "final"
    await until(lambda: old.retiring)
    h.launcher.behaviour = "no_load"                       # the replacement is slow to load
    h.sup.reconcile()
    (new,) = [x for x in h.handles(mv) if x is not old]
    assert new.state is S.STARTING and old.state is S.READY
    h.sup.reconcile()
    assert old.state is S.READY                            # still serving meanwhile
    assert (await outcome(submit(mv)))[0] == "final"
    h.fake(new).kill(signal.SIGKILL)                      # the replacement failed ...
    await until(lambda: new.state is S.BACKOFF)
    h.sup.reconcile()
    assert old.state is S.READY                            # ... the old one carries on
    h.launcher.behaviour = "ok"
    h.sup.reconcile()
    await until(lambda: any(x.state is S.READY and x is not old for x in h.handles(mv)))
    h.sup.reconcile()
    assert old.state in (S.STOPPING, S.STOPPED)
    await until(lambda: old.state is S.STOPPED)
    assert [x.state for x in h.handles(mv)] == [S.READY]


@scenario
async def test_worker_over_max_rss_is_recycled(h: Harness) -> None:
    mv = h.model(max_worker_rss=100_000)                   # FakeOps reports 123456 bytes
    scale(h, mv, 1, 1)
    (old,) = await ready(h, mv, 1)
    h.sup.check_workers()
    assert old.retiring
    labels = {"model_name": "m", "model_version": "1.0", "worker_id": old.id}
    assert h.metrics.registry.get_sample_value("torchd_worker_rss_bytes", labels) == 123456
    h.sup.reconcile()
    await until(lambda: any(x.state is S.READY and x is not old for x in h.handles(mv)))
    h.sup.reconcile()
    await until(lambda: old.state is S.STOPPED)
    assert h.metrics.registry.get_sample_value("torchd_worker_rss_bytes", labels) is None


@scenario
async def test_a_stop_does_not_wait_for_a_slow_spawn(h: Harness) -> None:
    mv = h.model()
    gate, spawning = asyncio.Event(), asyncio.Event()
    real_spawn = h.launcher.spawn

    async def slow_spawn(*args: Any) -> int:     # a zygote still importing torch
        spawning.set()
        await gate.wait()
        return await real_spawn(*args)

    h.launcher.spawn = slow_spawn  # type: ignore[method-assign]
    scale(h, mv, 1, 1)
    await asyncio.wait_for(spawning.wait(), 3)    # the runner waits in the spawn
    scale(h, mv, 0, 0)
    await until(lambda: not h.handles(mv), timeout=1)
    assert h.launcher.spawned == [] and h.sup.record(mv).start_failures == 0
