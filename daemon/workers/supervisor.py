"""The Supervisor: sole owner of the worker table; reconciles desired workers against actual.

HTTP routes, signals and timers only change desired state (a model's min/max workers, a drain
request) and wake the Supervisor; ``reconcile`` diffs desired against actual and acts. It is
idempotent and runs on every wake-up and on a short tick.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.errors import InternalServerError, ServiceUnavailable
from daemon.workers.launcher import ProcessOps
from daemon.workers.runner import WorkerLifecycle
from daemon.models.registry import ModelVersion, Registry
from daemon.workers.states import SLOT_STATES, RestartPolicy, WorkerState
from daemon.workers.handle import WorkerHandle
from daemon.workers.connection import ConnectionLost
from protocol import messages

logger = logging.getLogger(__name__)
S = WorkerState
LIVE_STATES = frozenset({S.STARTING, S.READY, S.BACKOFF})
RECOVERY_GRACE = 300.0      # /ping tolerates a model below minWorkers this long while restarting
EARLY_EXITS_KEPT = 256      # exit reports for pids not tracked yet (or never: stale ones)
EARLY_EXIT_TTL = 10.0       # seconds such a report stays credible


@dataclass
class Pool:
    """Per model version bookkeeping the Supervisor keeps beside the table."""

    target: int = 0                      # autoscaled count within [min, max]
    deep_since: float | None = None      # queue has stayed deep since
    below_min_since: float | None = None
    start_failures: int = 0              # every failure to start, ever (waiters diff it)
    last_error: str | None = None
    restarts: int = 0
    stop_timeout: float | None = None    # from the last scale call, for scale-down drains


@dataclass
class ScaleOutcome:
    ready: int
    target: int
    error: str | None = None


@dataclass
class SupervisorSettings:
    runtime_dir: Path
    max_frame: int
    server_version: str
    heartbeat_interval: float = 5.0
    autoscale_up_delay: float = 1.0
    autoscale_down_delay: float = 30.0
    tick: float = 0.5
    policy: RestartPolicy = field(default_factory=RestartPolicy)


class Supervisor:
    def __init__(self, registry: Registry, settings: SupervisorSettings,
                 launcher_factory: Callable, metrics: Any = None,
                 clock: Callable[[], float] = time.monotonic,
                 ops: ProcessOps | None = None) -> None:
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.ops = ops or ProcessOps()
        self.launcher = launcher_factory(self._process_exited)
        self.workers: dict[str, WorkerHandle] = {}
        self.pools: dict[ModelVersion, Pool] = {}
        self.lifecycle = WorkerLifecycle(self)
        self._ids = itertools.count(9000)
        self._by_pid: dict[int, WorkerHandle] = {}
        self._early_exits: dict[int, tuple[int, float]] = {}   # pid -> (returncode, when)
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._closing = False
        self._loop_task: asyncio.Task | None = None
        self._ping_seq = itertools.count(1)

    # ---- running -------------------------------------------------------------------------

    async def start(self) -> None:
        self.settings.runtime_dir.mkdir(parents=True, exist_ok=True)
        self._loop_task = asyncio.get_running_loop().create_task(self._run())
        await self.launcher.start()

    async def _run(self) -> None:
        last_heartbeat = self.clock()
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.tick)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                self.reconcile()
                self.autoscale()
                if self.clock() - last_heartbeat >= self.settings.heartbeat_interval:
                    last_heartbeat = self.clock()
                    self.heartbeat()
                    self.check_memory()
            except Exception:
                logger.exception("supervisor tick failed")

    def wake(self) -> None:
        self._wake.set()

    def notify_changed(self) -> None:
        """Wake everyone waiting on a worker state change (sync scale, drain)."""
        self._changed.set()
        self._changed = asyncio.Event()
        self.wake()

    # ---- desired state -------------------------------------------------------------------

    def pool(self, mv: ModelVersion) -> Pool:
        pool = self.pools.get(mv)
        if pool is None:
            pool = self.pools[mv] = Pool(target=mv.settings.min_workers)
        return pool

    def scale(self, mv: ModelVersion, min_workers: int, max_workers: int,
              stop_timeout: float | None = None) -> None:
        """New desired range; FAILED workers get another chance. Workers stopped to get
        within range finish their batch within ``stop_timeout`` s (None/-1: response_timeout)."""
        mv.settings.min_workers, mv.settings.max_workers = min_workers, max_workers
        pool = self.pool(mv)
        pool.stop_timeout = stop_timeout
        pool.target = min(max(pool.target, min_workers), max_workers)
        for handle in self.handles(mv):
            if handle.state in (S.FAILED, S.BACKOFF):
                self._forget(handle)
        self._reconcile_version(mv)
        self.notify_changed()

    # ---- reconcile -----------------------------------------------------------------------

    def reconcile(self) -> None:
        live = set(self.registry.all_versions())
        for mv in live:
            self._reconcile_version(mv)
        for mv in list(self.pools):
            if mv not in live and not self.handles(mv):
                del self.pools[mv]

    def _reconcile_version(self, mv: ModelVersion) -> None:
        pool = self.pool(mv)
        now = self.clock()
        for handle in self.handles(mv):
            if handle.state is S.BACKOFF and handle.retry_at <= now:
                self._forget(handle)
                self.spawn_worker(mv, failures=handle.failures,
                                  start_failures=handle.start_failures)
        slots = [h for h in self.handles(mv) if h.state in SLOT_STATES and not h.retiring]
        for _ in range(pool.target - len(slots)):
            self.spawn_worker(mv)
        if len(slots) > pool.target:
            for handle in sorted(slots, key=_stop_preference)[: len(slots) - pool.target]:
                self.request_stop(handle, timeout=pool.stop_timeout)
        self._retire_replaced(mv, pool)
        if mv.queue.depth and not self.can_serve(mv):
            mv.queue.fail_all(ServiceUnavailable(
                f'Model "{mv.name}" has no worker to serve inference request. '
                'Please use scale workers API to add workers.'))
        ready = sum(1 for h in slots if h.state is S.READY)
        if ready >= mv.settings.min_workers:
            pool.below_min_since = None
        elif pool.below_min_since is None:
            pool.below_min_since = now

    def _retire_replaced(self, mv: ModelVersion, pool: Pool) -> None:
        """A recycled worker stops only once enough fresh workers are READY."""
        fresh_ready = sum(1 for h in self.handles(mv) if h.state is S.READY and not h.retiring)
        for handle in self.handles(mv):
            if handle.retiring and handle.state is S.READY and fresh_ready >= pool.target:
                self.request_stop(handle, timeout=None)

    def spawn_worker(self, mv: ModelVersion, failures: int = 0, start_failures: int = 0,
                     ) -> WorkerHandle:
        handle = WorkerHandle(id=str(next(self._ids)), mv=mv, started_at=self.clock(),
                              failures=failures, start_failures=start_failures)
        self.workers[handle.id] = handle
        handle.task = asyncio.get_running_loop().create_task(self.lifecycle.run(handle))
        logger.info("starting worker %s for %s %s", handle.id, mv.name, mv.version)
        return handle

    def request_stop(self, handle: WorkerHandle, timeout: float | None) -> None:
        """Ask a worker to finish its in-flight batch (within ``timeout`` s) and exit."""
        if handle.state in (S.BACKOFF, S.FAILED):
            self._forget(handle)
            return
        if handle.state in (S.STOPPING, S.STOPPED):
            return
        limit = handle.mv.settings.response_timeout if timeout is None or timeout < 0 else timeout
        handle.stop_deadline = self.clock() + limit
        handle.move(S.STOPPING)
        handle.stop_requested.set()
        logger.info("stopping worker %s (%s %s)", handle.id, handle.mv.name, handle.mv.version)
        self.notify_changed()

    def _forget(self, handle: WorkerHandle) -> None:
        if handle.state is not S.STOPPED:
            handle.move(S.STOPPED)
        self.workers.pop(handle.id, None)
        if handle.pid is not None:
            self._by_pid.pop(handle.pid, None)
        if self.metrics is not None:
            self.metrics.forget_worker(handle.mv.name, handle.mv.version, handle.id)
        self.notify_changed()

    # ---- events from the lifecycle and the launcher --------------------------------------

    def track_pid(self, handle: WorkerHandle, pid: int) -> None:
        handle.pid = pid
        self._by_pid[pid] = handle
        early = self._early_exits.pop(pid, None)
        if early is not None and self.clock() - early[1] < EARLY_EXIT_TTL:
            self._process_exited(pid, early[0])

    def _process_exited(self, pid: int, returncode: int) -> None:
        handle = self._by_pid.get(pid)
        if handle is not None:
            handle.returncode = returncode
            handle.exited.set()
            return
        # A worker can die before its spawn call has returned its pid (the zygote sends
        # SPAWNED and EXITED back to back): keep the news until the pid is tracked. Late
        # reports about forgotten workers land here too, hence the TTL (pids get reused).
        self._early_exits[pid] = (returncode, self.clock())
        while len(self._early_exits) > EARLY_EXITS_KEPT:
            self._early_exits.pop(next(iter(self._early_exits)))

    def became_ready(self, handle: WorkerHandle) -> None:
        now = self.clock()
        handle.move(S.READY)
        handle.ready_since = handle.idle_since = now
        handle.start_failures = 0
        logger.info("worker %s READY (pid %s, %.2f s)", handle.id, handle.pid,
                    now - handle.started_at)
        self.notify_changed()

    def start_failed(self, handle: WorkerHandle, error: str) -> None:
        if handle.state is S.STOPPING:
            # Stopped while starting (scaled down, unregistered): asked for, not a failure
            # that a synchronous scale call or the backoff should count.
            self._forget(handle)
            return
        pool = self.pool(handle.mv)
        pool.start_failures += 1
        pool.last_error = handle.last_error = error
        handle.start_failures += 1
        handle.failures += 1
        policy = self.settings.policy
        if policy.gives_up(handle.start_failures):
            handle.move(S.FAILED)
            logger.error("worker %s for %s %s FAILED after %d start failures: %s", handle.id,
                         handle.mv.name, handle.mv.version, handle.start_failures, error)
        else:
            delay = policy.delay(handle.failures)
            handle.move(S.BACKOFF)
            handle.retry_at = self.clock() + delay
            logger.error("worker %s for %s %s failed to start: %s (retry in %g s)", handle.id,
                         handle.mv.name, handle.mv.version, error, delay)
        self.notify_changed()

    def died(self, handle: WorkerHandle, reason: str) -> None:
        """A READY worker went away unasked: back off, then replace it."""
        handle.last_error = reason
        if handle.state is S.STOPPING:
            # Killed on its way out (the stop timeout ran out): nothing to replace.
            logger.warning("worker %s (pid %s) stopped forcibly: %s", handle.id, handle.pid,
                           reason)
            self._forget(handle)
            return
        pool = self.pool(handle.mv)
        pool.restarts += 1
        if self.metrics is not None:
            self.metrics.worker_restarted(handle.mv.name, handle.mv.version)
        now = self.clock()
        proven = handle.ready_since is not None and \
            now - handle.ready_since >= self.settings.policy.reset_after
        handle.failures = 1 if proven else handle.failures + 1
        delay = self.settings.policy.delay(handle.failures)
        handle.move(S.BACKOFF)
        handle.retry_at = now + delay
        logger.error("worker %s (pid %s) of %s %s died: %s (exit status %s); replacing it in "
                     "%g s", handle.id, handle.pid, handle.mv.name, handle.mv.version, reason,
                     handle.returncode, delay)
        self.notify_changed()

    def stopped(self, handle: WorkerHandle) -> None:
        logger.info("worker %s stopped", handle.id)
        self._forget(handle)

    # ---- queries (return copies, never live tables) --------------------------------------

    def handles(self, mv: ModelVersion) -> list[WorkerHandle]:
        return [h for h in self.workers.values() if h.mv is mv]

    def counts(self, mv: ModelVersion) -> dict[str, int]:
        counts = {state.value: 0 for state in WorkerState}
        for handle in self.handles(mv):
            counts[handle.state.value] += 1
        return counts

    def can_serve(self, mv: ModelVersion) -> bool:
        """Some worker is READY or on its way (starting, or restarting after a crash)."""
        return any(h.state in LIVE_STATES for h in self.handles(mv))

    def ready_count(self, mv: ModelVersion) -> int:
        return sum(1 for h in self.handles(mv) if h.state is S.READY)

    def healthy(self, mv: ModelVersion) -> bool:
        if self.ready_count(mv) >= mv.settings.min_workers:
            return True
        if any(h.state is S.FAILED for h in self.handles(mv)):
            return False
        since = self.pool(mv).below_min_since
        return since is not None and self.clock() - since < RECOVERY_GRACE \
            and self.pool(mv).restarts > 0

    def describe_workers(self, mv: ModelVersion) -> list[dict[str, Any]]:
        return [self._describe_worker(h)
                for h in sorted(self.handles(mv), key=lambda h: int(h.id))]

    def _describe_worker(self, handle: WorkerHandle) -> dict[str, Any]:
        rss = self.ops.rss(handle.pid) if handle.pid else 0
        return {"id": handle.id, "startTime": handle.start_time_iso,
                "status": handle.state.value, "memoryUsage": rss, "pid": handle.pid or -1,
                "gpu": False, "gpuUsage": "N/A",
                **({"lastError": handle.last_error} if handle.last_error else {})}

    async def customized_metadata(self, mv: ModelVersion) -> Any:
        """The handler's describe_handle() result, asked of one READY worker."""
        for handle in self.handles(mv):
            if handle.state is S.READY and handle.conn is not None:
                reply = await handle.conn.request(messages.describe(), messages.DESCRIBED,
                                                  mv.settings.response_timeout)
                if not reply.get("ok"):
                    raise InternalServerError(f"describe_handle failed: {reply.get('error')}")
                return reply.get("result")
        raise ServiceUnavailable(f'Model "{mv.name}" has no worker to serve the describe request')

    # ---- waiting -------------------------------------------------------------------------

    async def wait_for_workers(self, mv: ModelVersion, timeout: float) -> ScaleOutcome:
        """Until the target is READY, a start fails, or ``timeout``: for synchronous calls.

        After a failure it still waits for the other workers of the same start (the ones
        STARTING when the wait began), so "some came up" (206) is told from "none did" (500)
        whichever finishes first; their retries are not waited for.
        """
        pool = self.pool(mv)
        failures_before = pool.start_failures
        cohort = {h.id for h in self.handles(mv) if h.state is S.STARTING}
        deadline = self.clock() + timeout
        while True:
            handles = self.handles(mv)
            ready = sum(1 for h in handles if h.state is S.READY and not h.retiring)
            stopping = any(h.state is S.STOPPING for h in handles)
            if ready >= pool.target and not stopping:
                return ScaleOutcome(ready, pool.target)
            if pool.start_failures > failures_before and not any(
                    h.id in cohort and h.state is S.STARTING for h in handles):
                return ScaleOutcome(ready, pool.target, pool.last_error)
            remaining = deadline - self.clock()
            if remaining <= 0 or mv not in self.pools:
                return ScaleOutcome(ready, pool.target, pool.last_error)
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), min(remaining, 1.0))
            except asyncio.TimeoutError:
                pass

    async def wait_for_stopped(self, handles: list[WorkerHandle]) -> None:
        tasks = [h.task for h in handles if h.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def drain(self, mv: ModelVersion, timeout: float) -> None:
        """Stop every worker of ``mv`` after its in-flight batch (bounded by ``timeout``)."""
        handles = self.handles(mv)
        for handle in handles:
            self.request_stop(handle, timeout)
        await self.wait_for_stopped(handles)
        self.pools.pop(mv, None)

    async def close(self, timeout: float) -> None:
        """Stop every worker after its in-flight batch (bounded by ``timeout``)."""
        self._closing = True
        if self._loop_task is not None:
            # First, or a reconcile tick would replace the workers being stopped.
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        handles = list(self.workers.values())
        for handle in handles:
            self.request_stop(handle, timeout)
        await self.wait_for_stopped(handles)
        await self.launcher.close()

    # ---- periodic checks -----------------------------------------------------------------

    def autoscale(self) -> None:
        now = self.clock()
        for mv, pool in list(self.pools.items()):
            s = mv.settings
            if s.max_workers <= s.min_workers:
                continue
            ready = [h for h in self.handles(mv) if h.state is S.READY and not h.retiring]
            deep = mv.queue.depth >= max(1, len(ready))
            pool.deep_since = (pool.deep_since or now) if deep else None
            if deep and now - pool.deep_since >= self.settings.autoscale_up_delay \
                    and pool.target < s.max_workers:
                self._autoscale(mv, pool, +1, now)
            elif not deep and pool.target > s.min_workers and mv.queue.depth == 0:
                idle = [h for h in ready if h.idle_since is not None
                        and now - h.idle_since >= self.settings.autoscale_down_delay]
                if idle:
                    self._autoscale(mv, pool, -1, now)

    def _autoscale(self, mv: ModelVersion, pool: Pool, step: int, now: float) -> None:
        pool.target += step
        pool.deep_since = now if step > 0 else None
        direction = "up" if step > 0 else "down"
        logger.info("autoscaling %s %s %s to %d workers", mv.name, mv.version, direction,
                    pool.target)
        if self.metrics is not None:
            self.metrics.autoscaled(mv.name, mv.version, direction)
        self.wake()

    def heartbeat(self) -> None:
        """A worker that leaves a ping unanswered for a whole interval is hung: kill it.

        An unanswered ping is never replaced by a newer one, so the interval counts from
        the first ping the worker ignored, however irregular the calls.
        """
        now = self.clock()
        for handle in list(self.workers.values()):
            if handle.state is not S.READY or handle.conn is None:
                continue
            if handle.ping_sent and handle.conn.last_pong < handle.ping_sent:
                if now - handle.ping_sent_at >= self.settings.heartbeat_interval:
                    logger.error("worker %s missed its heartbeat; killing it", handle.id)
                    self.lifecycle.kill(handle, "hung: missed its heartbeat")
                continue
            handle.ping_sent, handle.ping_sent_at = next(self._ping_seq), now
            try:
                handle.conn.ping(handle.ping_sent)
            except (ConnectionLost, OSError) as exc:
                # Its lifecycle sees the lost connection and reports the death.
                logger.debug("ping to worker %s failed: %s", handle.id, exc)

    def check_memory(self) -> None:
        """Recycle workers over max_worker_rss; publish RSS for the metrics."""
        for handle in list(self.workers.values()):
            if handle.state is not S.READY or handle.pid is None:
                continue
            rss = self.ops.rss(handle.pid)
            if self.metrics is not None:
                self.metrics.set_worker_rss(handle.mv.name, handle.mv.version, handle.id, rss)
            limit = handle.mv.settings.max_worker_rss
            if limit and rss > limit and not handle.retiring:
                logger.warning("worker %s uses %d bytes (> %d); recycling it", handle.id, rss,
                               limit)
                handle.retiring = True
                self.wake()


def _stop_preference(handle: WorkerHandle) -> tuple[int, int]:
    """Stop broken and starting workers before serving ones, idle before busy, newest first."""
    order = {S.FAILED: 0, S.BACKOFF: 1, S.STARTING: 2, S.READY: 3}
    busy = 1 if handle.batch else 0
    return (order.get(handle.state, 4) + busy, -int(handle.id))


