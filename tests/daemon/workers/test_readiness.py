"""daemon/workers/readiness.py: the one readiness rule of a model version, and the daemon's
readiness and health built on it (with the Supervisor harness: fake clock, fake processes)."""
from __future__ import annotations

import signal

import pytest

from daemon.workers.readiness import Health, version_ready
from daemon.workers.records import RECOVERY_GRACE
from tests.daemon.workers.supervisor_harness import Harness, S, ready, scale, scenario, until


@pytest.mark.parametrize(("ready_workers", "min_workers", "expected"), [
    (0, 0, False),    # no worker could answer: never ready, whatever minWorkers says
    (1, 0, True),
    (0, 1, False),
    (1, 1, True),
    (1, 2, False),
    (3, 2, True),
])
def test_a_version_is_ready_with_its_min_workers_ready_and_at_least_one(
        ready_workers: int, min_workers: int, expected: bool) -> None:
    assert version_ready(ready_workers, min_workers) is expected


@scenario
async def test_a_version_scaled_to_zero_is_not_ready_but_holds_no_one_back(h: Harness) -> None:
    health = Health(h.registry, h.sup)
    assert health.ready() and health.healthy()          # nothing registered
    idle = h.model("idle")                               # minWorkers 0, no worker
    assert not h.sup.ready(idle)                         # /v2/models/idle/ready: 4xx
    assert health.ready() and health.healthy()           # /v2/health/ready, /ping: 200
    served = h.model("served")
    scale(h, served, 1, 1)
    # starting: not ready, but healthy (a liveness probe must not kill a loading server)
    assert not h.sup.ready(served) and not health.ready() and health.healthy()
    await ready(h, served, 1)
    assert h.sup.ready(served) and health.ready() and health.healthy()
    scale(h, idle, 0, 1)
    await ready(h, idle, 0)
    assert not h.sup.ready(idle) and health.ready()


@scenario
async def test_a_crash_is_healthy_while_recovering_but_not_ready(h: Harness) -> None:
    health = Health(h.registry, h.sup)
    mv = h.model()
    scale(h, mv, 1, 1)
    (worker,) = await ready(h, mv, 1)
    h.fake(worker).kill(signal.SIGKILL)
    await until(lambda: worker.state is S.BACKOFF)
    h.sup.reconcile()
    assert not health.ready() and health.healthy()       # /ping tolerates a restart
    h.clock.advance(RECOVERY_GRACE)
    h.launcher.behaviour = "fail_load"                   # never comes back
    h.sup.reconcile()
    assert not health.ready() and not health.healthy()


@scenario
async def test_starting_workers_are_healthy_for_the_grace_only(h: Harness) -> None:
    health = Health(h.registry, h.sup)
    mv = h.model()
    h.launcher.behaviour = "no_load"
    scale(h, mv, 1, 1)
    assert not health.ready() and health.healthy()
    h.clock.advance(RECOVERY_GRACE)
    h.sup.reconcile()
    assert not health.ready() and not health.healthy()


@scenario
async def test_failed_workers_draining_and_missing_startup_models(h: Harness) -> None:
    health = Health(h.registry, h.sup)
    mv = h.model()
    h.launcher.behaviour = "fail_load"
    scale(h, mv, 1, 1)
    for _ in range(3):
        await until(lambda: h.handles(mv, S.BACKOFF, S.FAILED))
        h.clock.advance(60)
        h.sup.reconcile()
    await until(lambda: h.handles(mv, S.FAILED))
    assert not health.ready() and not health.healthy()
    scale(h, mv, 0, 0)                                   # the operator gives up on it
    assert health.ready() and health.healthy()
    health.expect(["declared"])                          # failed to load at start
    assert not health.ready() and health.healthy()
    h.model("declared")
    assert health.ready()
    health.draining = True
    assert not health.ready() and not health.healthy()
