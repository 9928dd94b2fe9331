"""What every dispatcher shares (batch mode: dispatcher.py; asyncCommunication: pipelining.py;
continuous batching: stepping.py): the worker's end as they need it, the observer they report
to, answering a batch's jobs, its sequences, sending a dead worker's batch again, the errors
of a missed deadline, and the cheap wait on an arrival."""
from __future__ import annotations

import abc
import asyncio
import itertools
import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from daemon.errors import RequestTimeout, ServiceUnavailable, TorchdError
from daemon.models.job import Job

logger = logging.getLogger(__name__)
batch_ids = itertools.count(1)   # unique per daemon, so a stray RESULT never matches a batch


class BatchChannel(Protocol):
    """The worker's end as the dispatchers need it (daemon.workers.connection implements it)."""

    lost: asyncio.Future    # resolves with the reason once the channel is gone

    def start_batch(self, batch_id: int, requests: list[dict[str, Any]],
                    on_part: Callable[[dict], None],
                    on_result: Callable[[dict], None]) -> asyncio.Future: ...

    def join(self, batch_id: int, requests: list[dict[str, Any]], cancel: list[str],
             acks: int, on_part: Callable[[dict], None],
             on_step: Callable[[dict], None]) -> None: ...

    def end_batch(self, batch_id: int | None = None) -> None: ...

    def close(self) -> None: ...

    # flow control: a job whose client is not taking its parts holds the channel (job.py)
    def hold(self, job_id: str) -> None: ...

    def release(self, job_id: str) -> None: ...


class WorkerDispatcher(Protocol):
    """What the worker runner and the worker table see of a dispatcher, whatever its mode."""

    @property
    def batch(self) -> list[Job] | None:
        """The jobs in the worker now; None when it has none."""
    idle_since: float | None     # since when it has had none
    served: int                  # requests done with
    answered: int                # batches (steps) the worker answered

    async def serve(self) -> str | None: ...

    def stop(self, deadline: float) -> None: ...


class BatchObserver(Protocol):
    def observe_batch(self, model: str, version: str, size: int) -> None: ...

    def observe_idle_gap(self, model: str, version: str, seconds: float) -> None: ...

    def redispatched(self, model: str, version: str, count: int) -> None: ...

    def record_handler_metrics(self, model: str, version: str, records: Any) -> None: ...


async def arrival_or(arrival: asyncio.Future, *others: asyncio.Future) -> None:
    """Await ``arrival`` (the queue resolves it), cut short when any of ``others`` is done.

    Awaited directly, a job's arrival wakes the worker's task at once; asyncio.wait would add a
    callback hop and cost twice what the wait itself does."""
    def wake(_: object) -> None:
        if not arrival.done():
            arrival.set_result(None)

    for other in others:
        other.add_done_callback(wake)
    try:
        await arrival
    finally:
        for other in others:
            other.remove_done_callback(wake)


class Feeder(abc.ABC):
    """What the three dispatchers share: their face to the worker runner (``batch``,
    ``idle_since``, ``served``, ``answered``, ``serve``, ``stop``), and the sequences a worker
    holds, registered while it serves and ended with it (their state dies with the worker)."""

    def __init__(self, mv: Any, channel: BatchChannel, clock: Callable[[], float],
                 death_error: Callable[[], TorchdError],
                 observer: BatchObserver | None = None,
                 after_batch: Callable[[], None] | None = None) -> None:
        self.mv = mv
        self.channel = channel
        self.clock = clock
        self.death_error = death_error   # what a lost channel means (500 "Worker died.", 507)
        self.observer = observer
        self.after_batch = after_batch
        self.idle_since: float | None = clock()   # None while the worker has some
        self.served = 0                           # requests sent and done with, answered or not
        self.answered = 0                         # batches (steps) the worker answered itself
        self.stop_deadline: float | None = None
        self._stop = asyncio.get_running_loop().create_future()

    def stop(self, deadline: float) -> None:
        """Send nothing more; finish what the worker holds by ``deadline``, then end ``serve``."""
        self.stop_deadline = deadline
        if not self._stop.done():
            self._stop.set_result(None)

    async def serve(self) -> str | None:
        """Feed the worker until stopped (None) or the channel is lost (the reason)."""
        self.mv.queue.sequences.register(self)
        reason: str | None = None
        try:
            reason = await self._serve()
            return reason
        finally:
            self._cancel_timers()
            # its sequences' state is gone with the worker: they end, never move (sequences.py)
            self.mv.queue.sequences.lose(self, f"its worker stopped ({reason})" if reason
                                         else "its worker stopped")

    @abc.abstractmethod
    async def _serve(self) -> str | None:
        """The mode's loop: None once stopped, else why the channel was lost."""

    def _cancel_timers(self) -> None:
        pass

    # ---- flow control: the source of the jobs it sends (job.py) ------------------------------

    def hold(self, job: Job) -> bool:
        """Pause the worker for ``job``, whose client is not taking its parts, if that pauses
        no other request (the job buffers its parts otherwise, and is cut off past its
        limit)."""
        if not self._alone_in_worker(job):
            return False
        self.channel.hold(job.id)
        return True

    def release(self, job_id: str) -> None:
        self.channel.release(job_id)

    def _alone_in_worker(self, job: Job) -> bool:
        """Whether ``job`` is all its worker serves, and will be while it holds it. Not in a
        running batch or with batches in flight: requests join them as they come."""
        return False

    async def _collect(self, batch_size: int, delay: float,
                       *interrupts: asyncio.Future) -> list[Job] | None:
        """A batch from the queue (``take_batch``), or None when the channel is lost, a stop,
        one of ``interrupts`` or a sequence's request comes first (a sequence's request must
        not wait for a batch to fill); the jobs collected so far go back to the front."""
        queue = self.mv.queue
        take = asyncio.ensure_future(queue.take_batch(batch_size, delay))
        await asyncio.wait({take, self.channel.lost, self._stop, queue.sequences.arrival(),
                            *interrupts}, return_when=asyncio.FIRST_COMPLETED)
        if take.done():
            return take.result()
        take.cancel()
        await asyncio.gather(take, return_exceptions=True)
        if not take.cancelled() and take.exception() is None:
            # the batch was complete as the cancel came (asyncio.wait_for then returns it and
            # drops the cancel): it goes back first in line rather than nowhere
            queue.requeue_front(take.result())
        return None

    async def _idle(self, *interrupts: asyncio.Future) -> None:
        """Wait for a job (shared or a sequence's) without take_batch's task: the light-load
        path."""
        queue = self.mv.queue
        await arrival_or(queue.next_arrival(), self.channel.lost, self._stop,
                         queue.sequences.arrival(), *interrupts)

    def _take_ready(self, batch_size: int, delay: float) -> list[Job] | None:
        """The next request of each sequence this worker serves (and of new ones it may
        claim), topped up from the shared queue without waiting; else a batch ready in the
        shared queue; else None. Sequence requests never wait for a batch to fill."""
        queue = self.mv.queue
        if queue.sequences:
            jobs = queue.sequences.take(self, batch_size)
            if jobs:
                return jobs + queue.pop_ready(batch_size - len(jobs))
        return queue.take_ready(batch_size, delay)


def answer(jobs: dict[str, Job], result: dict) -> None:
    for response in result.get("responses") or ():
        job = jobs.get(response.get("id"))
        if job is not None:
            job.finish(response)


def route_part(jobs: dict[str, Job], part: dict) -> None:
    job = jobs.get(part.get("id", ""))
    if job is not None:
        job.send_part(part)


def sequences_done(mv: Any, jobs: Iterable[Job], result: dict) -> None:
    """The sequence requests among ``jobs`` are over: their sequences go on (or end, when the
    request or its answer says so)."""
    by_id: dict[str, dict] | None = None
    for job in jobs:
        if job.sequence is not None:
            if by_id is None:
                by_id = {r.get("id"): r for r in result.get("responses") or ()}
            mv.queue.sequences.done(job, by_id.get(job.id))


def redispatch(mv: Any, batch: list[Job], observer: BatchObserver | None) -> list[Job]:
    """The jobs of a batch whose worker died that go back to the front of the queue, to run on
    another worker: once each (a job that meets a second death fails, so one that kills every
    worker it touches cannot loop), never one that streamed a part already, never a
    sequence's (its state died with the worker), and none when the model opted out (handlers
    with side effects)."""
    if not mv.settings.redispatch:
        return []
    again = [job for job in batch
             if not (job.redispatched or job.streamed or job.sequence is not None)]
    for job in again:
        job.redispatched = True
    sent = mv.queue.requeue_front(again) if again else 0   # none once it is closed
    if sent:
        logger.warning("worker of %s %s died with a batch: %d request(s) sent again",
                       mv.name, mv.version, sent)
        if observer is not None:
            observer.redispatched(mv.name, mv.version, sent)
    return again


def expiry(mv: Any, now: float, deadline: float) -> tuple[TorchdError, str]:
    """What a batch that passed ``deadline`` is answered (the response timeout, or the stop's
    limit when that came first), and the reason its worker's connection was dropped."""
    if now >= deadline:
        timeout = mv.settings.response_timeout
        return (RequestTimeout(f'Model "{mv.name}" version {mv.version} did not answer '
                               f'within {timeout} s (response_timeout)'),
                f"response timeout after {timeout} s")
    return (ServiceUnavailable(f'Worker for model "{mv.name}" was stopped before the '
                               'request finished'), "stop timeout")


def fail_dead_batch(mv: Any, batch: list[Job], error: TorchdError, died: bool,
                    observer: BatchObserver | None) -> None:
    """A batch its worker will never answer: sent again where allowed (a death), the rest
    answered with ``error``."""
    again = redispatch(mv, batch, observer) if died else []
    for job in batch:
        if job not in again:
            job.fail(error)
