"""The Supervisor's part in two model-config.yaml keys, with a fake clock and fake processes
(supervisor_harness.py): useJobTicket's count of free workers, and maxRetryTimeoutInSec, the
window in which a failing worker slot keeps being restarted."""
from __future__ import annotations

import signal
import time

from daemon.models.job import Job
from daemon.models.registry import ModelVersion
from daemon.workers.states import RestartPolicy
from protocol import messages
from tests.daemon.workers.supervisor_harness import (Harness, S, ready, scale, scenario, submit,
                                                    until)


# ---- useJobTicket --------------------------------------------------------------------------

@scenario
async def test_free_workers_are_idle_ready_ones_less_the_requests_waiting(h: Harness) -> None:
    mv = h.model()
    h.launcher.hold = True                       # a worker keeps its batch until answered
    assert h.sup.free_workers(mv) == 0           # none yet
    scale(h, mv, 2, 2)
    workers = await ready(h, mv, 2)
    assert h.sup.free_workers(mv) == 2
    submit(mv)
    await until(lambda: sum(len(h.fake(w).held) for w in workers) == 1)
    assert h.sup.free_workers(mv) == 1
    submit(mv)
    await until(lambda: sum(len(h.fake(w).held) for w in workers) == 2)
    assert h.sup.free_workers(mv) == 0
    submit(mv)                                   # waits: one more than the workers can take
    assert h.sup.free_workers(mv) == -1


@scenario
async def test_a_worker_filling_a_batch_is_not_free(h: Harness) -> None:
    mv = h.model(batch_size=2, max_batch_delay=60_000)
    scale(h, mv, 2, 2)
    await ready(h, mv, 2)
    job = Job("first", messages.request("first", [], []), time.monotonic())
    mv.queue.submit(job)
    await until(lambda: mv.queue.gathering == 1)   # taken, waiting for a second request
    assert mv.queue.depth == 0 and h.sup.free_workers(mv) == 1


# ---- maxRetryTimeoutInSec ------------------------------------------------------------------

async def fail_until_failed(h: Harness, mv: ModelVersion) -> float:
    """Let a failing slot retry on the fake clock until it is FAILED; the seconds it took."""
    began = h.clock()
    while True:
        (handle,) = await until(lambda: h.handles(mv, S.BACKOFF, S.FAILED))
        if handle.state is S.FAILED:
            return h.clock() - began
        h.clock.advance(handle.retry_at - h.clock())
        h.sup.reconcile()


@scenario
async def test_a_slot_failing_longer_than_the_retry_window_ends_failed(h: Harness) -> None:
    h.sup.settings.policy = RestartPolicy(max_start_failures=1000)   # the window decides
    mv = h.model(max_retry_timeout=10)
    h.launcher.behaviour = "fail_load"
    scale(h, mv, 1, 1)
    # failures at 0, 0, 1, 3, 7 s (backoff 0, 1, 2, 4, 8 s); the one at 15 s is past 10 s
    assert await fail_until_failed(h, mv) == 15
    (failed,) = h.handles(mv)
    assert h.sup.record(mv).slot(failed.slot).start_failures == 6
    h.launcher.behaviour = "ok"                  # the next scale call tries again
    scale(h, mv, 1, 1)
    await ready(h, mv, 1)


@scenario
async def test_the_count_of_start_failures_still_ends_a_slot_first(h: Harness) -> None:
    mv = h.model(max_retry_timeout=3600)
    h.launcher.behaviour = "fail_load"
    scale(h, mv, 1, 1)
    assert await fail_until_failed(h, mv) == 1   # 3 in a row (at 0, 0, 1 s): the policy's limit


@scenario
async def test_the_failure_run_starts_again_once_a_worker_was_ready(h: Harness) -> None:
    h.sup.settings.policy = RestartPolicy(max_start_failures=1000)
    mv = h.model(max_retry_timeout=10)
    h.launcher.behaviour = "fail_load"
    scale(h, mv, 1, 1)
    for attempt in range(3):                     # failing from 0 s to 3 s
        (handle,) = await until(lambda: h.handles(mv, S.BACKOFF))
        h.clock.advance(handle.retry_at - h.clock())
        h.launcher.behaviour = "ok" if attempt == 2 else "fail_load"
        h.sup.reconcile()
    (worker,) = await ready(h, mv, 1)
    h.clock.advance(8)                           # READY until 11 s after the first failure
    h.launcher.behaviour = "fail_load"
    h.fake(worker).kill(signal.SIGKILL)          # a new run: the crash, not the old failures
    # the crash at 11 s (backoff 4 s); a start failure at 15 s goes on (4 s into the run, not
    # 15 s), the one at 23 s ends it: 12 s on
    assert await fail_until_failed(h, mv) == 12


@scenario
async def test_a_zero_window_gives_up_at_the_first_failure(h: Harness) -> None:
    """TorchServe's isHealthy with maxRetryTimeoutInSec 0: no retry, after a start failure or
    after a READY worker's death alike."""
    mv = h.model(max_retry_timeout=0)
    h.launcher.behaviour = "fail_load"
    scale(h, mv, 1, 1)
    (failed,) = await until(lambda: h.handles(mv, S.FAILED))
    assert len(h.launcher.spawned) == 1
    h.launcher.behaviour = "ok"
    scale(h, mv, 1, 1)
    (worker,) = await ready(h, mv, 1)
    h.fake(worker).kill(signal.SIGKILL)
    await until(lambda: worker.state is S.FAILED)
    h.clock.advance(3600)
    h.sup.reconcile()
    assert h.handles(mv) == [worker] and len(h.launcher.spawned) == 2   # never replaced
    assert not h.sup.can_serve(mv)
