"""Async workers (``asyncCommunication``): batches go to the worker as soon as they form, without
waiting for earlier ones to be answered.

The worker runs its handler in an event loop (worker/async_loop.py), one task per batch, and
sends each RESULT when that batch is done, in any order; the connection matches them by batch
id. At most ``maxBatchesInFlight`` batches are in one worker at a time: past that, requests
wait in the daemon's queue, where a client that hangs up is simply dropped.

Each batch has its own ``response_timeout``. One that misses it poisons the connection (a late
RESULT can never be read) and the worker is replaced: that batch is answered 504, the others in
flight are answered as after a death (sent again on another worker if they streamed nothing).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from daemon.errors import ServiceUnavailable, TorchdError
from daemon.models.dispatching import (BatchChannel, BatchObserver, Feeder, answer,
                                       arrival_or, batch_ids, expiry, fail_dead_batch,
                                       route_part, sequences_done)
from daemon.models.job import Job

logger = logging.getLogger(__name__)


class _Flight:
    __slots__ = ("jobs", "deadline", "timer")

    def __init__(self, jobs: list[Job], deadline: float) -> None:
        self.jobs, self.deadline = jobs, deadline
        self.timer: asyncio.TimerHandle | None = None


class PipelineDispatcher(Feeder):
    """Feeds one async worker (see the module's docstring)."""

    def __init__(self, mv: Any, channel: BatchChannel, clock: Callable[[], float],
                 death_error: Callable[[], TorchdError],
                 observer: BatchObserver | None = None,
                 after_batch: Callable[[], None] | None = None) -> None:
        super().__init__(mv, channel, clock, death_error, observer, after_batch)
        self.flights: dict[int, _Flight] = {}     # batches in the worker, by batch id
        self._wake: asyncio.Future = asyncio.get_running_loop().create_future()
        self._expired: _Flight | None = None

    def stop(self, deadline: float) -> None:
        """Send nothing more; let the batches in flight finish by ``deadline``."""
        super().stop(deadline)
        for flight in self.flights.values():
            self._arm(flight)

    def _cancel_timers(self) -> None:
        for flight in self.flights.values():
            if flight.timer is not None:
                flight.timer.cancel()

    async def _serve(self) -> str | None:
        lost = self.channel.lost
        while True:
            if lost.done():
                return self._end_flights()
            stopping = self._stop.done()
            if stopping and not self.flights:
                return None
            settings = self.mv.settings
            if stopping or len(self.flights) >= settings.max_batches_in_flight:
                await self._rest(lost)   # until a batch is answered (or the worse)
                continue
            delay = settings.max_batch_delay / 1000.0
            jobs = self._take_ready(settings.batch_size, delay)
            if jobs is None:
                jobs = await self._gather(settings.batch_size, delay)
            if jobs:
                self._send(jobs)

    async def _rest(self, lost: asyncio.Future) -> None:
        if self._wake.done():
            self._wake = asyncio.get_running_loop().create_future()
        await arrival_or(self._wake, lost)

    async def _gather(self, batch_size: int, delay: float) -> list[Job]:
        """A batch from the queue; empty when something else came first (a stop, the
        worker's loss, an answer, a sequence's request)."""
        if self._wake.done():
            self._wake = asyncio.get_running_loop().create_future()
        if not self.mv.queue.depth:
            await self._idle(self._wake)
            return []
        return await self._collect(batch_size, delay, self._wake) or []

    def _send(self, jobs: list[Job]) -> None:
        now, batch_id = self.clock(), next(batch_ids)
        by_id = {job.id: job for job in jobs}
        for job in jobs:
            job.dispatched_at = now
            job.source = self
        try:
            self.channel.start_batch(batch_id, [job.request for job in jobs],
                                     lambda part: route_part(by_id, part),
                                     lambda message: self._on_result(batch_id, by_id, message))
        except ConnectionError:
            self.mv.queue.requeue_front(jobs)   # the task sees the loss next
            return
        flight = self.flights[batch_id] = _Flight(jobs, now + self.mv.settings.response_timeout)
        self._arm(flight)
        self._note_idle()
        if self.observer is not None:
            self.observer.observe_batch(self.mv.name, self.mv.version, len(jobs))

    def _on_result(self, batch_id: int, jobs: dict[str, Job], message: dict) -> None:
        flight = self.flights.pop(batch_id, None)
        if flight is None:
            return
        if flight.timer is not None:
            flight.timer.cancel()
        answer(jobs, message)
        if self.mv.queue.sequences:
            sequences_done(self.mv, flight.jobs, message)
        records = message.get("metrics")
        if records and self.observer is not None:
            self.observer.record_handler_metrics(self.mv.name, self.mv.version, records)
        self.served += len(flight.jobs)
        self.answered += 1
        self.channel.end_batch(batch_id)
        self._note_idle()
        if self.after_batch is not None:
            self.after_batch()
        if not self._wake.done():
            self._wake.set_result(None)

    @property
    def batch(self) -> list[Job] | None:
        """The jobs of every batch in flight (None: none is)."""
        if not self.flights:
            return None
        return [job for flight in self.flights.values() for job in flight.jobs]

    def _note_idle(self) -> None:
        self.idle_since = None if self.flights else self.clock()

    def _arm(self, flight: _Flight) -> None:
        limit = flight.deadline if self.stop_deadline is None \
            else min(flight.deadline, self.stop_deadline)
        if flight.timer is not None:
            flight.timer.cancel()
        flight.timer = asyncio.get_running_loop().call_later(
            max(0.0, limit - self.clock()), self._expire, flight, limit)

    def _expire(self, flight: _Flight, limit: float) -> None:
        flight.timer = None
        if self._expired is None and any(f is flight for f in self.flights.values()):
            self._expired = flight
            self.channel.close()   # poisoned: no late RESULT is read

    def _end_flights(self) -> str:
        """Nothing in flight will be answered: answer for every batch, say why."""
        flights, self.flights = list(self.flights.values()), {}
        self._note_idle()
        expired = self._expired
        if expired is not None:
            error, reason = expiry(self.mv, self.clock(), expired.deadline)
            fail_dead_batch(self.mv, expired.jobs, error, False, self.observer)
            others = ServiceUnavailable(f'Worker for model "{self.mv.name}" was replaced: '
                                        'another batch it ran timed out')
            for flight in flights:
                if flight is not expired:
                    fail_dead_batch(self.mv, flight.jobs, others, True, self.observer)
            return reason
        error = self.death_error()
        for flight in flights:
            fail_dead_batch(self.mv, flight.jobs, error, True, self.observer)
        return str(self.channel.lost.result())
