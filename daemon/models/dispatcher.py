"""The dispatcher: feeds one worker batches from its model version's queue, one at a time.

A batch forms by ``batch_size`` and ``max_batch_delay`` (counted from its first job's arrival),
goes down the worker's channel as one PREDICT frame, and each job is answered as the RESULT frame
is read. The dispatcher knows nothing of processes: the worker runner hands it a channel and asks
it to stop; it says why it ended (None for a stop, else why the channel was lost).

One batch ahead: when a worker's RESULT is read and a whole batch is waiting, the next PREDICT
leaves from inside that read, before the finished batch's jobs are answered and before any task
runs, so at saturation a worker waits for the daemon only as long as one frame takes to build
(the gap is a metric, ``torchd_worker_idle_gap_seconds``). A batch is never sent while another
is still running: nothing sits in a worker unstarted, so a worker that dies, is stopped or whose
model goes away never holds a batch it did not begin, and ``response_timeout`` counts from the
moment the worker can start it.

At saturation no task runs between batches at all: an answered batch is done with in that same
read. The dispatcher's task sleeps while batches follow one another and wakes only when none is
left to run, the worker dies, or a deadline passes (one timer per worker, not one per batch).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from daemon.errors import InternalServerError, TorchdError
from daemon.models.dispatching import (BatchChannel, BatchObserver, Feeder, answer,
                                       arrival_or, batch_ids, expiry, fail_dead_batch,
                                       route_part, sequences_done)
from daemon.models.job import Job


logger = logging.getLogger(__name__)
__all__ = ["BatchChannel", "BatchObserver", "Dispatcher"]


class Dispatcher(Feeder):
    """One worker's batch loop (see the module's docstring)."""

    def __init__(self, mv: Any, channel: BatchChannel, clock: Callable[[], float],
                 death_error: Callable[[], TorchdError],
                 observer: BatchObserver | None = None,
                 after_batch: Callable[[], None] | None = None) -> None:
        super().__init__(mv, channel, clock, death_error, observer, after_batch)
        self.batch: list[Job] | None = None       # in the worker now
        # The batch in the worker. A batch that is answered is done with in _on_result, as its
        # RESULT is read, where the next one starts: the task wakes only when none runs anymore
        # (_wake), the channel is lost, or the deadline passes (_deadline).
        self._running: _Running | None = None
        self._wake: asyncio.Future | None = None
        self._deadline = _Deadline(self)

    def stop(self, deadline: float) -> None:
        """Finish the batch in flight, by ``deadline`` at the latest, then end ``serve``."""
        super().stop(deadline)
        self._deadline.arm()   # the stop may bring the batch's deadline forward

    def _cancel_timers(self) -> None:
        self._deadline.cancel()

    async def _serve(self) -> str | None:
        queue, lost = self.mv.queue, self.channel.lost
        while not self._stop.done() or self._running is not None:
            if self._running is not None:
                reason = await self._while_running()
                if reason is not None:
                    return reason
                continue
            settings = self.mv.settings
            delay = settings.max_batch_delay / 1000.0
            # Under load the next batch is already queued: take it without a task and a wait.
            batch = self._take_ready(settings.batch_size, delay)
            if batch is None and not queue.depth:
                await self._idle()
                if lost.done():
                    return str(lost.result())
                continue
            if batch is None:
                batch = await self._collect(settings.batch_size, delay)
                if batch is None:
                    if lost.done():
                        return str(lost.result())
                    continue
            reason = self._send(batch)
            if reason is not None:
                return reason
        return None

    def _alone_in_worker(self, job: Job) -> bool:
        # one batch at a time, none sent while it runs: its other requests are all that waits
        return all(other is job or other.finished or other.cancelled
                   for other in self.batch or ())

    def _send(self, batch: list[Job]) -> str | None:
        """Send ``batch`` (serve's loop then awaits it), or say why the channel is lost."""
        try:
            self._start(batch)
        except ConnectionError as exc:
            self.mv.queue.requeue_front(batch)   # never sent: another worker takes them
            return str(exc)
        except Exception as exc:   # a bug, not the worker: its jobs get an answer all the same
            logger.exception("could not send a batch of %s %s", self.mv.name, self.mv.version)
            for job in batch:
                job.fail(InternalServerError(f"could not send the batch: {exc}"))
            return f"could not send a batch: {type(exc).__name__}: {exc}"
        return None

    def _start(self, batch: list[Job]) -> None:
        """Send ``batch``; raises ConnectionError (nothing sent) when the channel is gone."""
        now = self.clock()
        jobs = {job.id: job for job in batch}
        for job in batch:
            job.dispatched_at = now
            job.source = self
        result = self.channel.start_batch(
            next(batch_ids), [j.request for j in batch], lambda part: route_part(jobs, part),
            lambda message: self._on_result(jobs, message))
        self.batch, self.idle_since = batch, None
        if self.observer is not None:
            self.observer.observe_batch(self.mv.name, self.mv.version, len(batch))
        self._running = _Running(batch, result, now + self.mv.settings.response_timeout)
        self._deadline.arm()

    def _on_result(self, jobs: dict[str, Job], message: dict) -> None:
        """The RESULT was just read (in the channel's data callback): start the next batch if
        one is waiting, answer this one's jobs, and be done with it."""
        read_at = self.clock()
        finished, self._running = self._running, None
        if finished is not None and self.mv.queue.sequences:
            sequences_done(self.mv, finished.batch, message)   # their next may go in this batch
        self._start_next(read_at)
        answer(jobs, message)
        records = message.get("metrics")
        if records and self.observer is not None:   # after the answers: they wait for nobody
            self.observer.record_handler_metrics(self.mv.name, self.mv.version, records)
        if finished is not None:
            self._done_with(finished)
            self.answered += 1
            if self.after_batch is not None:
                self.after_batch()
        if self._running is None and self._wake is not None and not self._wake.done():
            self._wake.set_result(None)   # nothing runs: the task collects the next batch

    def _start_next(self, read_at: float) -> None:
        if self._stop.done():
            return
        settings = self.mv.settings
        batch = self._take_ready(settings.batch_size, settings.max_batch_delay / 1000.0)
        if batch is None:
            return
        try:
            self._start(batch)
        except Exception:   # lost channel, or worse: the task meets it and answers for it
            self.mv.queue.requeue_front(batch)
            return
        if self.observer is not None:
            self.observer.observe_idle_gap(self.mv.name, self.mv.version,
                                           self.clock() - read_at)

    def _done_with(self, running: _Running) -> None:
        self.served += len(running.batch)
        if self._running is None:
            self.channel.end_batch()
            self.batch, self.idle_since = None, self.clock()

    async def _while_running(self) -> str | None:
        """Wait while batches run (each answered one is done with in _on_result, which starts
        the next): None once none runs, else why the worker is lost, its batch answered for."""
        self._wake = asyncio.get_running_loop().create_future()
        try:
            await arrival_or(self._wake, self.channel.lost)
        finally:
            self._wake = None
        running = self._running
        if running is None:
            return None
        self._running = None
        if running.result.done() and not running.result.cancelled():
            running.result.exception()   # retrieved: the outcome is told below
        if running is self._deadline.expired:
            error, reason = expiry(self.mv, self.clock(), running.deadline)
            died = False
        else:   # the channel was lost: the worker died
            error, reason, died = self.death_error(), str(self.channel.lost.result()), True
        self._done_with(running)
        fail_dead_batch(self.mv, running.batch, error, died, self.observer)
        return reason

    def _expire(self, running: _Running) -> None:
        """``running`` passed its deadline (or the stop's): the channel is poisoned at once, so
        a late answer can never reach it or the next batch, and the task answers its jobs."""
        self.channel.close()
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)


class _Running:
    """A batch sent to the worker, awaiting its RESULT until ``deadline``."""

    __slots__ = ("batch", "result", "deadline")

    def __init__(self, batch: list[Job], result: asyncio.Future, deadline: float) -> None:
        self.batch, self.result, self.deadline = batch, result, deadline


class _Deadline:
    """One timer per dispatcher for its running batch's deadline, or the stop's deadline once
    a stop is asked for, whichever comes first.

    Armed once and moved only when the limit comes earlier (a stop): a timer that finds the
    batch it was set for answered re-arms itself for the batch running then. A timer per
    batch cost a handle, a heap push and a cancel on every batch."""

    __slots__ = ("dispatcher", "timer", "at", "expired")

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.timer: asyncio.TimerHandle | None = None
        self.at = 0.0
        self.expired: _Running | None = None   # the batch that passed its limit

    def limit(self) -> float | None:
        running, stop_at = self.dispatcher._running, self.dispatcher.stop_deadline
        if running is None:
            return None
        return running.deadline if stop_at is None else min(running.deadline, stop_at)

    def arm(self) -> None:
        limit = self.limit()
        if limit is None or (self.timer is not None and self.at <= limit):
            return   # nothing runs, or the timer comes first and will look again
        self.cancel()
        self.at = limit
        delay = max(0.0, limit - self.dispatcher.clock())
        self.timer = asyncio.get_running_loop().call_later(delay, self._fire)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _fire(self) -> None:
        self.timer = None
        limit = self.limit()
        if limit is None:
            return
        if limit > self.dispatcher.clock():
            self.arm()   # set for a batch since answered: now for the one running
            return
        self.expired = self.dispatcher._running
        if self.expired is not None:   # limit() says a batch runs
            self.dispatcher._expire(self.expired)
