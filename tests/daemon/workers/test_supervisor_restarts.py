"""The Supervisor's restarts with a fake clock and fake processes (supervisor_harness.py):
crashes and their backoff, start failures, FAILED and its recovery, and the heartbeat."""
from __future__ import annotations

import asyncio
import signal

from daemon.models.registry import ModelVersion
from daemon.workers.handle import WorkerHandle
from tests.daemon.workers.supervisor_harness import (
    HEARTBEAT,
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


# ---- crashes, backoff, reset ---------------------------------------------------------------

async def crash(h: Harness, mv: ModelVersion) -> WorkerHandle:
    (handle,) = h.handles(mv, S.READY)
    h.fake(handle).kill(signal.SIGKILL)
    await until(lambda: handle.state is S.BACKOFF)
    return handle


@scenario
async def test_crash_backoff_doubles_from_zero_to_the_cap(h: Harness) -> None:
    mv = h.model()
    scale(h, mv, 1, 1)
    await ready(h, mv, 1)
    for expected in (0, 1, 2, 4, 8, 16, 30, 30):
        handle = await crash(h, mv)
        assert handle.retry_at - h.clock() == expected
        assert "closed its socket" in handle.last_error
        if expected:
            h.sup.reconcile()
            h.clock.advance(expected - 0.5)
            h.sup.reconcile()
            assert h.handles(mv) == [handle]              # still waiting out its delay
            h.clock.advance(0.5)
        h.sup.reconcile()
        (fresh,) = h.handles(mv)
        assert fresh is not handle and fresh.state is S.STARTING
        assert handle.state is S.STOPPED
        await ready(h, mv, 1)
    assert h.sup.record(mv).restarts == 8


@scenario
async def test_a_proven_ready_period_resets_the_backoff(h: Harness) -> None:
    mv = h.model()
    scale(h, mv, 1, 1)
    await ready(h, mv, 1)
    for expected in (0, 1, 2):
        await crash(h, mv)
        h.clock.advance(expected)
        h.sup.reconcile()
        await ready(h, mv, 1)
    h.clock.advance(h.sup.settings.policy.reset_after)     # READY long enough: proven
    handle = await crash(h, mv)
    assert handle.retry_at == h.clock()                    # immediate again
    h.sup.reconcile()
    await ready(h, mv, 1)
    handle = await crash(h, mv)                            # and the count restarts at 1
    assert handle.retry_at - h.clock() == 1


@scenario
async def test_a_worker_that_answered_a_batch_is_replaced_at_once_every_time(h: Harness) -> None:
    """Deaths from outside (an operator's kill, the OOM killer) of workers that were serving:
    each costs one immediate restart, never a growing backoff with the slot left empty."""
    mv = h.model()
    scale(h, mv, 1, 1)
    await ready(h, mv, 1)
    for _ in range(4):
        job = submit(mv)
        assert (await outcome(job))[0] == "final"          # it answered a batch
        handle = await crash(h, mv)
        assert handle.retry_at == h.clock()
        h.sup.reconcile()
        await ready(h, mv, 1)


@scenario
async def test_in_flight_batch_fails_500_when_its_worker_dies(h: Harness) -> None:
    mv, handle, job = await one_busy_worker(h, redispatch=False)   # the model opted out
    queued = submit(mv)
    h.fake(handle).kill(signal.SIGKILL)
    kind, error = await outcome(job)
    assert kind == "error" and error.status == 500 and error.message == "Worker died."
    assert not queued.finished                             # waits for the replacement
    h.launcher.hold = False
    h.sup.reconcile()
    await ready(h, mv, 1)
    kind, response = await outcome(queued)
    assert kind == "final" and response["body"] == b"done"


@scenario
async def test_in_flight_batch_runs_again_on_the_replacement_when_its_worker_dies(
        h: Harness) -> None:
    mv, handle, job = await one_busy_worker(h)
    queued = submit(mv)
    h.fake(handle).kill(signal.SIGKILL)
    await until(lambda: handle.state is S.BACKOFF)
    assert not job.finished and mv.queue.depth == 2     # back in the queue, first in line
    h.launcher.hold = False
    h.sup.reconcile()
    await ready(h, mv, 1)
    for waiting in (job, queued):             # the dead worker's job first, then the queued
        kind, response = await outcome(waiting)
        assert kind == "final" and response["body"] == b"done"
    assert job.redispatched and not queued.redispatched


# ---- start failures, FAILED, recovery ------------------------------------------------------

@scenario
async def test_start_failures_back_off_then_fail_until_the_next_scale(h: Harness) -> None:
    mv = h.model()
    h.launcher.behaviour = "fail_load"
    scale(h, mv, 1, 1)
    for expected_delay in (0, 1):
        (handle,) = await until(lambda: h.handles(mv, S.BACKOFF))
        assert handle.last_error == "ImportError: no handler"
        assert handle.retry_at - h.clock() == expected_delay
        h.clock.advance(expected_delay)
        h.sup.reconcile()
    (failed,) = await until(lambda: h.handles(mv, S.FAILED))
    assert h.sup.record(mv).slot(failed.slot).start_failures == 3
    assert len(h.launcher.spawned) == 3
    assert h.sup.describe_workers(mv)[0]["status"] == "FAILED"
    assert h.sup.describe_workers(mv)[0]["lastError"] == "ImportError: no handler"
    assert h.sup.record(mv).last_error == "ImportError: no handler"

    h.clock.advance(3600)                                  # FAILED stays FAILED
    h.sup.reconcile()
    assert h.handles(mv) == [failed] and len(h.launcher.spawned) == 3
    assert not h.sup.can_serve(mv) and not h.sup.healthy(mv)
    job = submit(mv)
    h.sup.reconcile()                                      # nobody can serve: 503 at once
    kind, error = await outcome(job)
    assert kind == "error" and error.status == 503

    h.launcher.behaviour = "ok"                            # fixed; the next scale call
    scale(h, mv, 1, 1)
    assert failed.state is S.STOPPED
    (fresh,) = h.handles(mv)
    assert fresh.state is S.STARTING and h.sup.record(mv).slot(fresh.slot).start_failures == 0
    await ready(h, mv, 1)
    assert h.sup.healthy(mv)


@scenario
async def test_a_process_that_exits_before_connecting_failed_to_start(h: Harness) -> None:
    mv = h.model()
    h.launcher.behaviour = "exit"
    scale(h, mv, 1, 1)
    (handle,) = await until(lambda: h.handles(mv, S.BACKOFF))
    assert handle.last_error == "worker process exited with code 1"


@scenario
async def test_startup_timeout_kills_the_loading_worker(h: Harness) -> None:
    mv = h.model(startup_timeout=0.2)   # type: ignore[arg-type]  (seconds; real time)
    h.launcher.behaviour = "no_load"
    scale(h, mv, 1, 1)
    (handle,) = await until(lambda: h.handles(mv, S.BACKOFF))
    assert handle.last_error == "worker did not load within 0.2 s (startup_timeout)"
    assert (handle.pid, signal.SIGKILL) in h.ops.signals


@scenario
async def test_a_stop_while_starting_is_not_a_start_failure(h: Harness) -> None:
    mv = h.model()
    h.launcher.behaviour = "no_load"
    scale(h, mv, 1, 1)
    await until(lambda: h.launcher.spawned)
    scale(h, mv, 0, 0)
    await until(lambda: not h.handles(mv))
    record = h.sup.record(mv)
    assert record.start_failures == 0 and record.last_error is None


@scenario
async def test_a_process_that_connected_for_a_start_given_up_is_let_go(h: Harness) -> None:
    """Stopped while its spawn was under way, after its process had connected: the start is
    given up, and the connection closed, so the process does not wait on it forever."""
    mv = h.model()
    h.launcher.answer_spawn = asyncio.Event()   # never set: the spawn is given up first
    scale(h, mv, 1, 1)
    (worker,) = await until(lambda: h.launcher.spawned)
    await until(lambda: worker.writer is not None)   # connected
    scale(h, mv, 0, 0)
    await until(lambda: not h.handles(mv))
    await until(lambda: not worker.alive)   # its connection ended: it exited


@scenario
async def test_wait_for_workers_reports_the_first_start_failure(h: Harness) -> None:
    mv = h.model()
    h.launcher.behaviour = "fail_load"
    scale(h, mv, 1, 1)
    result = await h.sup.wait_for_workers(mv, 5)
    assert result.ready == 0 and result.error == "ImportError: no handler"


# ---- heartbeat -----------------------------------------------------------------------------

@scenario
async def test_heartbeat_kills_a_hung_worker_and_spares_a_live_one(h: Harness) -> None:
    mv = h.model()
    scale(h, mv, 2, 2)
    live, hung = await ready(h, mv, 2)
    h.fake(hung).pong = False
    h.sup.check_workers()
    await until(lambda: live.conn.last_pong > 0)    # the live one answered its ping
    h.clock.advance(HEARTBEAT * 0.9)
    h.sup.check_workers()                     # not a whole interval yet: nobody is killed
    assert hung.state is S.READY
    h.clock.advance(HEARTBEAT * 0.1)
    h.sup.check_workers()
    await until(lambda: hung.state is S.BACKOFF)
    assert hung.last_error == "hung: missed its heartbeat"
    assert (hung.pid, signal.SIGKILL) in h.ops.signals
    assert live.state is S.READY
    h.sup.reconcile()
    await ready(h, mv, 2)
