"""Sequence affinity (TorchServe's stateful models): every job of one sequence runs on one
worker, in order.

A version's JobQueue keeps each open sequence's jobs here, in a lane of their own, apart from
its shared FIFO. The first dispatcher that takes a job of a lane owns the lane from then on;
only it takes that lane's later jobs, one at a time, so a worker sees a sequence's requests in
the order they came. A dispatcher that ends (its worker stopped or died) gives its lanes up, and
the next dispatcher to take a job owns them. The gRPC side opens a sequence with its first job
and ends it when the client's stream ends or idles past ``sequenceMaxIdleMSec``.
"""
from __future__ import annotations

import asyncio
import collections
from typing import Any

from daemon.errors import TorchdError


class _Lane:
    __slots__ = ("owner", "jobs")

    def __init__(self) -> None:
        self.owner: object | None = None   # the dispatcher serving this sequence
        self.jobs: collections.deque[Any] = collections.deque()


class SequenceLanes:
    """The open sequences of one model version, by sequence id."""

    def __init__(self) -> None:
        self._lanes: dict[str, _Lane] = {}
        self._arrival: asyncio.Future | None = None

    def __bool__(self) -> bool:
        return bool(self._lanes)

    @property
    def depth(self) -> int:
        return sum(len(lane.jobs) for lane in self._lanes.values())

    def owner_of(self, sequence: str) -> object | None:
        lane = self._lanes.get(sequence)
        return lane.owner if lane is not None else None

    def add(self, job: Any) -> None:
        self._lanes.setdefault(job.sequence, _Lane()).jobs.append(job)
        self._announce()

    def put_front(self, jobs: list[Any]) -> None:
        """Jobs given back (their worker died before answering), first in their lanes."""
        for job in reversed(jobs):
            self._lanes.setdefault(job.sequence, _Lane()).jobs.appendleft(job)
        if jobs:
            self._announce()

    def take(self, owner: object) -> Any | None:
        """The next job of a lane ``owner`` owns, or of one nobody owns (``owner`` owns it
        then); None when there is none."""
        if not self._lanes:
            return None
        for lane in self._lanes.values():
            if lane.owner is not None and lane.owner is not owner:
                continue
            while lane.jobs:
                job = lane.jobs.popleft()
                if not job.cancelled:
                    lane.owner = owner
                    return job
        return None

    def arrival(self) -> asyncio.Future:
        """Done once a job enters a lane (or a lane with jobs loses its owner): what idle
        dispatchers, and one busy filling a batch, wait on besides the shared queue. Apart from
        the queue's own arrivals, so a batch being filled is never woken by a job it cannot
        take."""
        if self._arrival is None or self._arrival.done():
            self._arrival = asyncio.get_running_loop().create_future()
        return self._arrival

    def _announce(self) -> None:
        if self._arrival is not None and not self._arrival.done():
            self._arrival.set_result(None)

    def remove(self, job: Any) -> None:
        lane = self._lanes.get(job.sequence)
        if lane is not None and job in lane.jobs:
            lane.jobs.remove(job)

    def release(self, owner: object) -> None:
        """``owner``'s worker is gone: its sequences go to whichever worker takes them next."""
        for lane in self._lanes.values():
            if lane.owner is owner:
                lane.owner = None
                if lane.jobs:
                    self._announce()   # the idle dispatchers look again

    def end(self, sequence: str, error: TorchdError) -> None:
        """Close a sequence; a job still waiting in it fails with ``error``."""
        lane = self._lanes.pop(sequence, None)
        for job in lane.jobs if lane is not None else ():
            job.fail(error)

    def drain(self) -> list[Any]:
        """Every waiting job of every lane (the version is going away); the lanes stay."""
        jobs = [job for lane in self._lanes.values() for job in lane.jobs]
        for lane in self._lanes.values():
            lane.jobs.clear()
        return jobs
