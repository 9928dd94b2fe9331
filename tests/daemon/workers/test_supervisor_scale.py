"""The Supervisor's scaling with a fake clock and fake processes (supervisor_harness.py): scale
and reconcile, draining stops, and the autoscaler."""
from __future__ import annotations

import signal

from tests.daemon.workers.supervisor_harness import (
    DOWN_DELAY,
    UP_DELAY,
    Harness,
    S,
    one_busy_worker,
    outcome,
    ready,
    scale,
    scenario,
    submit,
    until,
)


# ---- scale and reconcile -------------------------------------------------------------------

@scenario
async def test_scale_starts_workers_and_reconcile_is_idempotent(h: Harness) -> None:
    mv = h.model()
    scale(h, mv, 2, 2)
    assert [x.state for x in h.handles(mv)] == [S.STARTING, S.STARTING]
    for _ in range(3):
        h.sup.reconcile()
    assert len(h.handles(mv)) == 2
    await ready(h, mv, 2)
    h.sup.reconcile()
    assert len(h.launcher.spawned) == 2
    described = h.sup.describe_workers(mv)
    assert [w["status"] for w in described] == ["READY", "READY"]
    assert [w["id"] for w in described] == ["9000", "9001"]
    assert all(w["pid"] >= 40000 and w["memoryUsage"] == 123456 for w in described)


@scenario
async def test_scale_down_stops_the_surplus_and_forgets_it(h: Harness) -> None:
    mv = h.model()
    scale(h, mv, 3, 3)
    await ready(h, mv, 3)
    scale(h, mv, 1, 1)
    assert len(h.handles(mv, S.STOPPING)) == 2
    await until(lambda: len(h.handles(mv)) == 1)
    assert [x.id for x in h.handles(mv)] == ["9000"]       # the newest went first
    assert not any(sig == signal.SIGKILL for _, sig in h.ops.signals)  # polite stop


@scenario
async def test_a_version_unregistered_before_its_scale_gets_no_workers(h: Harness) -> None:
    # a register call saves its snapshot between adding the version and scaling it; an
    # unregister in between has drained the version (no workers yet) and removed its archive
    mv = h.model()
    h.registry.remove(mv)
    await h.sup.drain(mv, 5)
    scale(h, mv, 2, 2)
    h.sup.reconcile()
    assert h.handles(mv) == [] and h.launcher.spawned == []
    assert mv not in h.sup.records


# ---- drain ---------------------------------------------------------------------------------

@scenario
async def test_scale_down_lets_the_in_flight_batch_finish(h: Harness) -> None:
    mv, handle, job = await one_busy_worker(h)
    scale(h, mv, 0, 0, stop_timeout=10)
    assert handle.state is S.STOPPING
    # the stop has reached the worker's dispatcher (its deadline set): it lets the batch run
    await until(lambda: handle.dispatcher.stop_deadline is not None, what="the stop delivered")
    assert not job.finished
    h.fake(handle).answer()
    kind, _ = await outcome(job)
    assert kind == "final"
    await until(lambda: not h.handles(mv))
    assert not any(sig == signal.SIGKILL for _, sig in h.ops.signals)


@scenario
async def test_scale_down_with_timeout_zero_stops_at_once(h: Harness) -> None:
    mv, handle, job = await one_busy_worker(h)
    scale(h, mv, 0, 0, stop_timeout=0)
    kind, error = await outcome(job, timeout=1)
    assert kind == "error" and error.status == 503
    await until(lambda: not h.handles(mv))
    assert (handle.pid, signal.SIGKILL) in h.ops.signals
    assert h.sup.record(mv).restarts == 0                    # asked for: not a crash


@scenario
async def test_queued_jobs_get_503_when_no_worker_remains(h: Harness) -> None:
    mv, handle, running = await one_busy_worker(h)
    queued = submit(mv)
    scale(h, mv, 0, 0, stop_timeout=10)
    kind, error = await outcome(queued)
    assert kind == "error" and error.status == 503
    h.fake(handle).answer()
    assert (await outcome(running))[0] == "final"


@scenario
async def test_close_stops_every_worker_and_starts_none(h: Harness) -> None:
    mv = h.model()
    await h.sup.start()                                    # with its own reconcile loop
    scale(h, mv, 2, 2)
    await ready(h, mv, 2)
    await h.sup.close(5)
    assert h.sup.workers == {}
    assert len(h.launcher.spawned) == 2
    assert not any(w.alive for w in h.launcher.spawned)


# ---- autoscaling ---------------------------------------------------------------------------

@scenario
async def test_autoscale_follows_the_queue_within_min_and_max(h: Harness) -> None:
    mv = h.model()
    h.launcher.hold = True
    scale(h, mv, 1, 3)
    await ready(h, mv, 1)
    jobs = [submit(mv) for _ in range(6)]
    await until(lambda: h.launcher.spawned[0].held)
    h.sup.autoscale()
    assert h.sup.record(mv).target == 1                     # deep, but not for long enough
    for target in (2, 3):
        h.clock.advance(UP_DELAY)
        h.sup.autoscale()
        assert h.sup.record(mv).target == target
        h.sup.reconcile()
        await ready(h, mv, target)
    h.clock.advance(UP_DELAY * 5)
    h.sup.autoscale()
    assert h.sup.record(mv).target == 3                     # never above max

    h.launcher.hold = False
    for worker in h.launcher.spawned:
        worker.hold = False
        worker.answer()
    for job in jobs:
        assert (await outcome(job))[0] == "final"
    h.sup.autoscale()
    assert h.sup.record(mv).target == 3                     # idle, but not for long enough
    for target in (2, 1):
        h.clock.advance(DOWN_DELAY)
        h.sup.autoscale()
        assert h.sup.record(mv).target == target
        h.sup.reconcile()
        await until(lambda: len(h.handles(mv)) == target)
    h.clock.advance(DOWN_DELAY * 5)
    h.sup.autoscale()
    assert h.sup.record(mv).target == 1                     # never below min
    assert h.autoscale_events(mv, "up") == 2
    assert h.autoscale_events(mv, "down") == 2


@scenario
async def test_a_drained_version_leaves_nothing_behind(h: Harness) -> None:
    """Unregister's order: drain the workers, drop the version, reconcile. Its handles, its
    record and its entry in the per-version index (what can_serve reads) are all gone."""
    mv, other = h.model("gone"), h.model("stays")
    scale(h, mv, 2, 2)
    scale(h, other, 1, 1)
    await ready(h, mv, 2)
    await ready(h, other, 1)
    assert h.sup.can_serve(mv)
    await h.sup.drain(mv, timeout=5)
    h.registry.remove(mv)
    h.sup.reconcile()
    assert h.sup.handles(mv) == [] and not h.sup.can_serve(mv)
    assert mv not in h.sup.records and mv not in h.sup._by_version
    assert len(h.sup.handles(other)) == 1 and h.sup.can_serve(other)
