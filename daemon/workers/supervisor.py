"""The Supervisor: sole owner of the worker table; reconciles desired workers against actual.

The model manager changes a version's settings (its min/max range) through ``update_settings``,
the only call that replaces a registered version's frozen settings, or asks for its range again
with ``scale``; signals and timers only wake the Supervisor. ``reconcile`` diffs desired against
actual and acts; it is idempotent and runs on every wake-up and on a short tick. Each worker is
run by a WorkerRunner, which reports back through the ``WorkerEvents`` methods below
(process_started, became_ready, start_failed, died, stopped, served_enough): the children report,
the Supervisor decides.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from daemon.errors import no_worker_error
from daemon.osutil import exit_description
from daemon.models.registry import ModelVersion, Registry
from daemon.workers.handle import WorkerHandle, stop_preference
from daemon.workers.autoscale import autoscale_step
from daemon.workers.launcher import ProcessOps
from daemon.workers.pids import PidTable
from daemon.gpus.placement import GpuInventory, GpuPlacement
from daemon.workers.table_views import WorkerTableViews
from daemon.workers.template_runner import TemplateRunner
from daemon.workers.template_supervision import TemplateSupervision
from daemon.workers.templates import TemplateHandle
from daemon.workers.probes import Heartbeat, over_memory_limit
from daemon.workers.records import ScaleOutcome, VersionRecord
from daemon.workers.runner import RunnerSettings, WorkerRunner
from daemon.workers.threads import ThreadSplit
from daemon.workers.waiting import wait_for_workers
from daemon.workers.states import SLOT_STATES, RestartPolicy, WorkerState

logger = logging.getLogger(__name__)
S = WorkerState


@dataclass
class SupervisorSettings:   # no default for a config key: the config's own is the one
    runner: RunnerSettings             # what every worker is started with
    heartbeat_interval: float          # config heartbeat_interval
    autoscale_up_delay: float          # config autoscale_up_delay
    autoscale_down_delay: float        # config autoscale_down_delay
    tick: float = 0.5
    cpus: int = 1                      # CPUs the workers share (daemon.osutil.usable_cpus)
    policy: RestartPolicy = field(default_factory=RestartPolicy)


class Supervisor(WorkerTableViews, TemplateSupervision):
    def __init__(self, registry: Registry, settings: SupervisorSettings,
                 launcher_factory: Callable, metrics: Any = None,
                 clock: Callable[[], float] = time.monotonic,
                 ops: ProcessOps | None = None, gpus: GpuInventory | None = None) -> None:
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.ops = ops or ProcessOps()
        self.pids: PidTable[WorkerHandle | TemplateHandle] = PidTable(clock,
                                                                     self._process_exited)
        self.launcher = launcher_factory(self.pids.exited)
        self.runner = WorkerRunner(self.launcher, self.ops, clock, settings.runner, events=self,
                                   observer=metrics)
        self.template_runner = TemplateRunner(self.launcher, self.ops, clock, settings.runner,
                                              events=self, on_exit=self.pids.exited,
                                              daemon_pid=os.getpid())
        self.templates: dict[ModelVersion, TemplateHandle] = {}   # preloadModel's, by version
        self.workers: dict[str, WorkerHandle] = {}
        # the same handles by version: what each request's can_serve looks through
        self._by_version: dict[ModelVersion, dict[str, WorkerHandle]] = {}
        self.records: dict[ModelVersion, VersionRecord] = {}
        self._ids = itertools.count(9000)
        self._template_ids = itertools.count(1)
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._closing = False
        self._loop_task: asyncio.Task | None = None
        self.heartbeats = Heartbeat(settings.heartbeat_interval, clock)
        self.threads = ThreadSplit(settings.cpus)
        self.placement = GpuPlacement(gpus or GpuInventory(), self.workers)

    # ---- running -------------------------------------------------------------------------

    async def start(self) -> None:
        self.settings.runner.runtime_dir.mkdir(parents=True, exist_ok=True)
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
                    self.check_workers()
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

    def record(self, mv: ModelVersion) -> VersionRecord:
        if mv not in self.records:
            self.records[mv] = VersionRecord(target=mv.settings.min_workers)
        return self.records[mv]

    def update_settings(self, mv: ModelVersion, stop_timeout: float | None = None,
                        **changes: Any) -> None:
        """The one call that changes a registered version's (frozen) settings; then ``scale``."""
        mv.settings = dataclasses.replace(mv.settings, **changes)
        self.scale(mv, stop_timeout)

    def scale(self, mv: ModelVersion, stop_timeout: float | None = None) -> None:
        """Bring the target within ``mv.settings``' min/max (new, or asked for again); FAILED
        workers get another chance. Workers stopped to get within range finish their batch
        within ``stop_timeout`` s (None/-1: response_timeout).

        A version no longer registered gets no workers: a register call whose version was
        unregistered while it saved the snapshot must not start them after the drain (they
        would load from the archive directory the unregister removed)."""
        if not self.registry.holds(mv):
            return
        record = self.record(mv)
        record.stop_timeout = stop_timeout
        record.target = min(max(record.target, mv.settings.min_workers), mv.settings.max_workers)
        for handle in self.handles(mv):
            if handle.state in (S.FAILED, S.BACKOFF):
                self._forget(handle)
        self._reconcile_version(mv)
        self.threads.rebalance(self.workers.values())   # before any new runner starts
        self.notify_changed()

    # ---- reconcile -----------------------------------------------------------------------

    def reconcile(self) -> None:
        live = set(self.registry.all_versions())
        for mv in live:
            self._reconcile_version(mv)
        self.threads.rebalance(self.workers.values())   # once, before any new runner starts
        self.stop_templates_of_gone(live)
        for mv in {*self.records, *self._by_version} - live:   # versions gone, workers too
            if not self.handles(mv):
                self.records.pop(mv, None)
                self._by_version.pop(mv, None)

    def _reconcile_version(self, mv: ModelVersion) -> None:
        record = self.record(mv)
        now = self.clock()
        self.reconcile_template(mv, record)   # before any worker that would be forked from it
        for handle in self.handles(mv):
            if handle.state is S.BACKOFF and handle.retry_at <= now:
                self._forget(handle)
                self.spawn_worker(mv, handle.slot)   # its slot's history is in the record
        slots = [h for h in self.handles(mv) if h.state in SLOT_STATES and not h.retiring]
        for _ in range(record.target - len(slots)):
            self.spawn_worker(mv)
        if len(slots) > record.target:
            for handle in sorted(slots, key=stop_preference)[: len(slots) - record.target]:
                self.request_stop(handle, timeout=record.stop_timeout)
        self._retire_replaced(mv, record)
        if mv.queue.depth and not self.can_serve(mv):
            mv.queue.fail_all(no_worker_error(mv.name))
        if self.ready(mv):
            record.below_min_since = None
        elif record.below_min_since is None:
            record.below_min_since = now

    def _retire_replaced(self, mv: ModelVersion, record: VersionRecord) -> None:
        """A recycled worker stops only once enough fresh workers are READY."""
        fresh_ready = sum(1 for h in self.handles(mv) if h.state is S.READY and not h.retiring)
        for handle in self.handles(mv):
            if handle.retiring and handle.state is S.READY and fresh_ready >= record.target:
                self.request_stop(handle, timeout=None)

    def spawn_worker(self, mv: ModelVersion, slot: int | None = None) -> WorkerHandle:
        """A new worker in ``slot`` (a replacement), or in a newly opened one."""
        if slot is None:   # a new slot, on the GPU placement chooses; a replacement keeps it
            slot = self.record(mv).open_slot({h.slot for h in self.handles(mv)},
                                             self.placement.choose(mv))
        handle = WorkerHandle(id=str(next(self._ids)), mv=mv, slot=slot,
                              gpu=self.record(mv).slot(slot).gpu, started_at=self.clock(),
                              template=self.template_for_worker(mv))
        self.workers[handle.id] = handle
        self._by_version.setdefault(mv, {})[handle.id] = handle
        handle.task = asyncio.get_running_loop().create_task(self.runner.run(handle))
        logger.info("starting worker %s for %s %s", handle.id, mv.name, mv.version)
        return handle

    def next_template_id(self) -> str:
        """t1, t2 ...: unique for the daemon's life, apart from the workers' ids."""
        return f"t{next(self._template_ids)}"

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
        if handle.dispatcher is not None:   # at once: no batch may leave for it from now on
            handle.dispatcher.stop(handle.stop_deadline)
        logger.info("stopping worker %s (%s %s)", handle.id, handle.mv.name, handle.mv.version)
        self.notify_changed()

    def _forget(self, handle: WorkerHandle) -> None:
        if handle.state is not S.STOPPED:
            handle.move(S.STOPPED)
        self.workers.pop(handle.id, None)
        self._by_version.get(handle.mv, {}).pop(handle.id, None)
        if handle.pid is not None:
            self.pids.forget(handle.pid)
        if self.metrics is not None:
            self.metrics.forget_worker(handle.mv.name, handle.mv.version, handle.id)
        if handle.mv in self.templates and handle.mv in self.records:
            # a template that waited for its version's last worker to go stops now
            self.reconcile_template(handle.mv, self.records[handle.mv])
        self.notify_changed()

    # ---- events from the runners (WorkerEvents) and the launcher -------------------------

    def process_started(self, handle: WorkerHandle, pid: int) -> None:
        handle.pid = pid
        self.pids.track(pid, handle)

    def _process_exited(self, owner: WorkerHandle | TemplateHandle, returncode: int) -> None:
        owner.returncode = returncode
        owner.exited.set()

    def became_ready(self, handle: WorkerHandle) -> None:
        now = self.clock()
        handle.move(S.READY)
        handle.ready_since = now
        self.record(handle.mv).started(handle.slot)
        logger.info("worker %s READY (pid %s, %.2f s)", handle.id, handle.pid,
                    now - handle.started_at)
        if self.metrics is not None:
            self.metrics.worker_loaded(handle.mv.name, handle.mv.version, handle.id,
                                       now - handle.started_at)
        self.notify_changed()

    def start_failed(self, handle: WorkerHandle, error: str) -> None:
        if handle.state is S.STOPPING:
            # Stopped while starting (scaled down, unregistered): asked for, not a failure
            # that a synchronous scale call or the backoff should count.
            self._forget(handle)
            return
        gone = self.placement.vanished(handle, error)   # its GPU is gone: no retry
        handle.last_error = error = gone or error
        mv, record, now = handle.mv, self.record(handle.mv), self.clock()
        delay = record.start_failed(handle.slot, error, self.settings.policy, now,
                                    mv.settings.max_retry_timeout)
        if delay is None or gone:
            handle.move(S.FAILED)
            logger.error("worker %s for %s %s FAILED after %d start failures: %s (failing for "
                         "%.0f s, maxRetryTimeoutInSec %d)", handle.id, mv.name, mv.version,
                         record.slot(handle.slot).start_failures, error,
                         record.failing_for(handle.slot, now), mv.settings.max_retry_timeout)
        else:
            handle.move(S.BACKOFF)
            handle.retry_at = now + delay
            logger.error("worker %s for %s %s failed to start: %s (retry in %g s)", handle.id,
                         mv.name, mv.version, error, delay)
        self.notify_changed()

    def died(self, handle: WorkerHandle, reason: str) -> None:
        """A READY worker went away unasked: back off, then replace it (maxRetryTimeoutInSec 0:
        FAILED)."""
        handle.last_error = reason
        if handle.state is S.STOPPING:
            # Killed on its way out (the stop timeout ran out): nothing to replace.
            logger.warning("worker %s (pid %s) stopped forcibly: %s", handle.id, handle.pid,
                           reason)
            self._forget(handle)
            return
        if self.placement.vanished(handle, reason):
            return self.start_failed(handle, reason)    # FAILED, naming the GPU
        now = self.clock()
        delay = self.record(handle.mv).crashed(handle.slot, handle.ready_for(now),
                                               handle.answered, self.settings.policy, now,
                                               handle.mv.settings.max_retry_timeout)
        if delay is not None and self.metrics is not None:
            self.metrics.worker_restarted(handle.mv.name, handle.mv.version)
        handle.move(S.BACKOFF if delay is not None else S.FAILED)
        handle.retry_at = now + (delay or 0.0)
        logger.error("worker %s (pid %s) of %s %s died: %s (%s); %s", handle.id, handle.pid,
                     handle.mv.name, handle.mv.version, reason,
                     exit_description(handle.returncode),
                     "FAILED: not replaced (maxRetryTimeoutInSec 0)" if delay is None
                     else f"replacing it in {delay:g} s")
        self.notify_changed()

    def stopped(self, handle: WorkerHandle) -> None:
        logger.info("worker %s stopped", handle.id)
        self._forget(handle)

    def served_enough(self, handle: WorkerHandle) -> None:
        """Past max_requests_per_worker or max_worker_rss: recycle it once replaced."""
        if not handle.retiring:
            handle.retiring = True
            self.wake()

    # (queries, which return copies and never live tables: table_views.py)

    # ---- waiting -------------------------------------------------------------------------

    async def wait_for_workers(self, mv: ModelVersion, timeout: float) -> ScaleOutcome:
        """For synchronous calls: see daemon/workers/waiting.py."""
        return await wait_for_workers(self, mv, timeout)

    async def changed(self, timeout: float) -> None:
        """Until the next worker state change, or ``timeout`` seconds."""
        changed = self._changed
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout)

    async def wait_for_stopped(self, handles: list[WorkerHandle]) -> None:
        tasks = [h.task for h in handles if h.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def drain(self, mv: ModelVersion, timeout: float) -> None:
        """Stop every worker of ``mv`` after its in-flight batch (bounded by ``timeout``)."""
        handles = self.handles(mv)
        for handle in handles:
            self.request_stop(handle, timeout)
        # the template after its workers: it collects them as they exit (worker/template.py)
        await self.wait_for_stopped(handles)
        await self.stop_templates([mv])
        self.records.pop(mv, None)

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
        await self.stop_templates(self.templates)
        await self.launcher.close()

    # ---- periodic checks -----------------------------------------------------------------

    def autoscale(self) -> None:
        now, settings = self.clock(), self.settings
        for mv, record in list(self.records.items()):
            ready = [h for h in self.handles(mv) if h.state is S.READY and not h.retiring]
            step = autoscale_step(record, mv.settings.min_workers, mv.settings.max_workers,
                                  mv.queue.depth, [h.idle_since for h in ready], now,
                                  settings.autoscale_up_delay, settings.autoscale_down_delay)
            if step:
                record.target += step
                direction = "up" if step > 0 else "down"
                logger.info("autoscaling %s %s %s to %d workers", mv.name, mv.version,
                            direction, record.target)
                if self.metrics is not None:
                    self.metrics.autoscaled(mv.name, mv.version, direction)
                self.wake()

    def check_workers(self) -> None:
        """Kill hung workers (a heartbeat missed); recycle those over max_worker_rss."""
        ready = [h for h in self.workers.values() if h.state is S.READY and h.conn is not None]
        for handle in self.heartbeats.beat(ready):
            logger.error("worker %s missed its heartbeat; killing it", handle.id)
            self.runner.kill(handle, "hung: missed its heartbeat")
        for handle in over_memory_limit(ready, self.ops.rss, self.metrics):
            self.served_enough(handle)
        self.launcher.reap_orphans()
