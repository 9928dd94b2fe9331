"""Continuous batching (``continuousBatching``): one worker's running batch, step by step.

The worker keeps its unfinished requests between steps (worker/stepping.py). Each step it sends
one STEP frame: a response for every request that took part, a part for those that go on
(``more``), the final answer for those that are done. As that frame is read, the daemon answers
and streams to the clients, and sends one JOIN frame back: the requests that join the next step
(up to ``batchSize`` in all), the ids of those whose clients hung up (they leave the batch; the
handler stops seeing them), and the acknowledgement of that STEP. So the daemon's work is per
step, never per part per request. The worker runs at most STEP_WINDOW (2) steps ahead of the
acknowledgements: it computes a step while the daemon delivers the last one, and STEP frames
never pile up unread, so a joining request starts within about two steps.

``response_timeout`` bounds each step. A missed step, a stop's deadline or the worker's death
ends the running batch as in batch mode (daemon/models/dispatcher.py): the connection is
dropped, every request in the batch is answered, and requests that never streamed a part may
run again on another worker (never a sequence's).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from daemon.errors import TorchdError
from daemon.models.dispatching import (BatchChannel, BatchObserver, Feeder, arrival_or,
                                       batch_ids, expiry, fail_dead_batch, route_part,
                                       sequences_done)
from daemon.models.job import Job

logger = logging.getLogger(__name__)


class StepDispatcher(Feeder):
    """Feeds one worker's running batch (see the module's docstring)."""

    def __init__(self, mv: Any, channel: BatchChannel, clock: Callable[[], float],
                 death_error: Callable[[], TorchdError],
                 observer: BatchObserver | None = None,
                 after_batch: Callable[[], None] | None = None) -> None:
        super().__init__(mv, channel, clock, death_error, observer, after_batch)
        self.running: dict[str, Job] = {}         # in the worker's running batch, by id
        self._batch_id = next(batch_ids)
        self._wake: asyncio.Future | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._step_deadline = 0.0
        self._expired: float | None = None        # the deadline that was missed

    @property
    def batch(self) -> list[Job] | None:
        """The running batch, for the worker table's views (None: it is empty)."""
        return list(self.running.values()) if self.running else None

    def stop(self, deadline: float) -> None:
        """Let the running batch finish, by ``deadline`` at the latest; no request joins."""
        super().stop(deadline)
        self._arm()
        self._poke()

    def _cancel_timers(self) -> None:
        self._disarm()

    async def _serve(self) -> str | None:
        queue, lost = self.mv.queue, self.channel.lost
        while True:
            if self.running:
                self._wake = asyncio.get_running_loop().create_future()
                try:
                    await arrival_or(self._wake, lost)
                finally:
                    self._wake = None
                if lost.done() or self._expired is not None:
                    return self._end_running()
                continue
            if self._stop.done():
                return None
            jobs = self._take_now(self.mv.settings.batch_size) or await self._first_batch()
            if lost.done():
                if jobs:
                    queue.requeue_front(jobs)
                return str(lost.result())
            if jobs:
                reason = self._join(jobs, [], acks=0)
                if reason is not None:
                    return reason

    async def _first_batch(self) -> list[Job]:
        """Requests for an idle worker: wait for one, then gather up to ``batchSize`` within
        ``maxBatchDelay`` of the first (as batch mode); empty when stopped or lost first."""
        queue, settings = self.mv.queue, self.mv.settings
        if not queue.depth:
            await self._idle()
            return []
        return await self._collect(settings.batch_size,
                                   settings.max_batch_delay / 1000.0) or []

    def _take_now(self, room: int) -> list[Job]:
        """Up to ``room`` requests that can join now, without waiting: the next of each
        sequence this worker serves (one per sequence per step), then the shared queue's."""
        if room <= 0 or self._stop.done():
            return []
        queue = self.mv.queue
        jobs = queue.sequences.take(self, room, overlap=True) if queue.sequences else []
        return jobs + queue.pop_ready(room - len(jobs))

    def _join(self, jobs: list[Job], cancel: list[str], acks: int) -> str | None:
        """One JOIN frame: ``jobs`` join the running batch, ``cancel`` leave it, ``acks``
        STEP frames are read. Returns why the channel is lost, if it is (the jobs go back to
        the queue then)."""
        now = self.clock()
        for job in jobs:
            job.dispatched_at = now
            job.source = self
        try:
            self.channel.join(self._batch_id, [job.request for job in jobs], cancel, acks,
                              lambda part: route_part(self.running, part), self._on_step)
        except ConnectionError as exc:
            self.mv.queue.requeue_front(jobs)
            return str(exc)
        for job in jobs:
            self.running[job.id] = job
        if jobs:
            self.idle_since = None
            if self._step_deadline <= now:
                self._step_deadline = now + self.mv.settings.response_timeout
                self._arm()
        return None

    def _on_step(self, message: dict[str, Any]) -> None:
        """A STEP was just read (in the connection's data callback): answer and stream, then
        send the next step's joins and cancels in one frame."""
        finished = self._deliver(message.get("responses") or ())
        self.answered += 1
        if self.observer is not None:
            self.observer.observe_batch(self.mv.name, self.mv.version,
                                        len(message.get("responses") or ()))
            records = message.get("metrics")
            if records:
                self.observer.record_handler_metrics(self.mv.name, self.mv.version, records)
        if finished:
            self.served += len(finished)
            if self.mv.queue.sequences:
                sequences_done(self.mv, finished, message)
            if self.after_batch is not None:
                self.after_batch()
        self._next_step()

    def _deliver(self, responses: Any) -> list[Job]:
        finished: list[Job] = []
        for response in responses:
            job = self.running.get(response.get("id"))
            if job is None:
                continue
            if response.get("more") and not response.get("error"):
                job.send_part(response)
            else:
                del self.running[job.id]
                job.finish(response)
                finished.append(job)
        return finished

    def _next_step(self) -> None:
        gone = [job for job in self.running.values() if job.cancelled or job.finished]
        for job in gone:   # hung up, or answered already (a client timeout): they leave
            del self.running[job.id]
            if job.sequence is not None:
                self.mv.queue.sequences.done(job, None)
        joins = self._take_now(self.mv.settings.batch_size - len(self.running))
        # Every STEP gets its JOIN, empty or not: the worker runs at most STEP_WINDOW steps
        # ahead of these acknowledgements (protocol/messages.py).
        if self._join(joins, [job.id for job in gone], acks=1) is not None:
            self._poke()   # lost: the task answers for the running batch
            return
        now = self.clock()
        if self.running:
            # the armed timer, when it fires, re-arms for the later deadline (``_fire``): no
            # timer made and cancelled per step
            self._step_deadline = now + self.mv.settings.response_timeout
            if self._timer is None:
                self._arm()
            return
        self.idle_since, self._step_deadline = now, 0.0
        # Holds end; the running batch stays known to the connection: a STEP the worker ran
        # before it read the last cancel may still come, and it gets its acknowledgement too.
        self.channel.end_batch()
        self._disarm()
        self._poke()

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    # ---- the step's deadline -----------------------------------------------------------------

    def _limit(self) -> float | None:
        if not self.running:
            return None
        stop_at = self.stop_deadline
        return self._step_deadline if stop_at is None else min(self._step_deadline, stop_at)

    def _arm(self) -> None:
        self._disarm()
        limit = self._limit()
        if limit is not None:
            self._timer = asyncio.get_running_loop().call_later(
                max(0.0, limit - self.clock()), self._fire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        limit = self._limit()
        if limit is None:
            return
        if limit > self.clock():
            self._arm()
            return
        self._expired = self._step_deadline   # poison the connection: no late step is read
        self.channel.close()
        self._poke()

    def _end_running(self) -> str:
        """The running batch will never be answered: answer its requests, say why."""
        jobs = list(self.running.values())
        self.running.clear()
        self.idle_since = self.clock()
        if self._expired is not None:
            error, reason = expiry(self.mv, self.clock(), self._expired)
            died = False
        else:
            error, reason, died = self.death_error(), str(self.channel.lost.result()), True
        fail_dead_batch(self.mv, jobs, error, died, self.observer)
        return reason
