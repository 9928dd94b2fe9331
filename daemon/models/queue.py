"""Per model version: a bounded job queue and the batch aggregator that feeds idle workers."""
from __future__ import annotations

import asyncio
import collections
import time
from typing import Callable

from daemon.errors import ServiceUnavailable, TorchdError
from daemon.models.job import Job
from daemon.models.sequences import SequenceRules, SequenceTable


class QueueFull(Exception):
    pass


class JobQueue:
    """Bounded FIFO of waiting jobs; ``capacity`` counts waiting jobs, not the batch in a worker.

    Only one worker collects a batch at a time, so concurrent requests group into one batch
    instead of being split across idle workers.
    """

    def __init__(self, capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.clock = clock
        self._jobs: collections.deque[Job] = collections.deque()
        self._gathering: list[Job] = []   # taken into a batch that is still filling
        self._arrival_waiters: list[asyncio.Future] = []
        self._collecting = asyncio.Lock()
        self._closed: TorchdError | None = None
        self.sequences = SequenceTable(clock)   # jobs of open sequences wait there, not in _jobs

    @property
    def depth(self) -> int:
        return len(self._jobs)

    @property
    def gathering(self) -> int:
        """Jobs taken out of the queue into a batch that is still filling (max_batch_delay)."""
        return sum(1 for job in self._gathering if not job.cancelled)

    @property
    def remaining_capacity(self) -> int:
        return max(0, self.capacity - len(self._jobs))

    def submit(self, job: Job) -> None:
        if self._closed is not None:
            raise self._closed
        if len(self._jobs) >= self.capacity:
            self._drop_cancelled()
            if len(self._jobs) >= self.capacity:
                raise QueueFull()
        self._jobs.append(job)
        self._announce()

    def submit_sequence(self, job: Job, rules: SequenceRules, starting: bool) -> None:
        """Queue a request of sequence ``job.sequence`` (sequences.py): it waits in its
        sequence, for the worker that holds its state; refusals as SequenceTable.admit."""
        if self._closed is not None:
            raise self._closed
        self.sequences.admit(job, rules, starting)   # wakes the dispatchers: sequences.arrival()

    def next_arrival(self) -> asyncio.Future:
        """A future that is done once a job is queued (submitted, or given back).

        What a worker waits on while it has nothing to do, or while its batch fills."""
        future = asyncio.get_running_loop().create_future()
        self._arrival_waiters.append(future)
        return future

    def _announce(self) -> None:
        waiters, self._arrival_waiters = self._arrival_waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)

    def abandon(self, job: Job) -> None:
        """Drop a job whose client hung up: it leaves the queue now and is never dispatched."""
        job.abandon()
        self._remove(job)

    def time_out(self, job: Job, error: TorchdError) -> None:
        """A job past its client timeout is answered with ``error`` now: still waiting, it
        leaves the queue and is never dispatched; running, its late answer is dropped."""
        job.cancelled = True   # a batch still collecting drops it too
        job.fail(error)
        self._remove(job)

    def _remove(self, job: Job) -> None:
        if job.sequence is not None:
            self.sequences.remove(job)
        try:
            self._jobs.remove(job)
        except ValueError:
            pass   # dispatched already, or popped into a batch that is still collecting

    def _drop_cancelled(self) -> None:
        live = [job for job in self._jobs if not job.cancelled]
        if len(live) != len(self._jobs):
            self._jobs = collections.deque(live)

    def _pop_live(self) -> Job | None:
        while self._jobs:
            job = self._jobs.popleft()
            if not job.cancelled:
                return job
        return None

    async def _wait_for_job(self, deadline: float | None) -> Job | None:
        while True:
            job = self._pop_live()
            if job is not None:
                return job
            if deadline is None:
                await self.next_arrival()
                continue
            remaining = deadline - self.clock()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self.next_arrival(), remaining)
            except asyncio.TimeoutError:
                return None

    def pop_ready(self, count: int) -> list[Job]:
        """Up to ``count`` waiting jobs, at once (none while another worker is collecting a
        batch: it is owed them)."""
        jobs: list[Job] = []
        if self._collecting.locked():
            return jobs
        while len(jobs) < count and (job := self._pop_live()) is not None:
            jobs.append(job)
        return jobs

    def take_ready(self, batch_size: int, max_delay_s: float) -> list[Job] | None:
        """The batch ``take_batch`` would return at once, without waiting, or None.

        Under load a batch is usually there already; handing it over synchronously spares the
        caller a task and a wait per batch. None when nothing is queued, when the batch could
        still grow (fewer than ``batch_size`` jobs and the first one's delay not over), or when
        another worker is collecting (it is owed the next jobs).
        """
        if self._collecting.locked() or not self._jobs:
            return None
        batch: list[Job] = []
        while len(batch) < batch_size and (job := self._pop_live()) is not None:
            batch.append(job)
        if batch and (len(batch) == batch_size
                      or self.clock() >= batch[0].arrival + max_delay_s):
            return batch
        self._jobs.extendleft(reversed(batch))   # it may still grow: take_batch waits for it
        return None

    async def take_batch(self, batch_size: int, max_delay_s: float) -> list[Job]:
        """Wait for the first job, then gather up to ``batch_size`` arriving before the first
        job's arrival + ``max_delay_s``."""
        async with self._collecting:
            while True:
                batch = await self._collect(batch_size, max_delay_s)
                # a client may hang up while its job waits here for the batch to fill
                batch = [job for job in batch if not job.cancelled]
                if batch:
                    return batch

    async def _collect(self, batch_size: int, max_delay_s: float) -> list[Job]:
        first = await self._wait_for_job(None)
        assert first is not None   # with no deadline it waits for one
        batch = self._gathering = [first]
        deadline = first.arrival + max_delay_s
        try:
            while len(batch) < batch_size:
                job = self._pop_live() or await self._wait_for_job(deadline)
                if job is None:
                    break
                batch.append(job)
        except asyncio.CancelledError:
            # the worker went away while the batch filled: its jobs go back, first in line
            self.requeue_front(batch)
            raise
        finally:
            self._gathering = []
        return batch

    def requeue_front(self, jobs: list[Job]) -> int:
        """Give jobs back, first in line (their worker went away before sending them, or died
        running them); how many went back (none once the queue is closed: they fail)."""
        if self._closed is not None:
            for job in jobs:
                job.fail(self._closed)
            return 0
        back = [job for job in jobs if not job.finished and not job.cancelled]
        self.sequences.put_front([job for job in back if job.sequence is not None])
        self._jobs.extendleft(reversed([job for job in back if job.sequence is None]))
        if self._jobs:
            self._announce()
        return len(back)

    def close(self, error: TorchdError) -> int:
        """The version is going away: answer every waiting job with ``error`` now, and every job
        that comes later (a new request, or a batch a stopping worker gives back) too."""
        self._closed = error
        return self.fail_all(error)

    def fail_all(self, error: TorchdError) -> int:
        """Answer every waiting job with ``error`` (unregister, no workers left, shutdown)."""
        count = 0
        self._jobs.extend(self.sequences.drain())
        while self._jobs:
            job = self._jobs.popleft()
            if not job.finished:
                job.fail(error)
                count += 1
        return count


def queue_full_error(model_name: str) -> ServiceUnavailable:
    return ServiceUnavailable(f'Model "{model_name}" job queue is full',
                              headers={"Retry-After": "1"})
