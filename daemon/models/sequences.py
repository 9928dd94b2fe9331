"""Sequences (TorchServe's stateful models, ``sequenceBatching``): every request of a sequence
runs on the worker that holds the sequence's state, in the order it came.

A version's JobQueue keeps its open sequences here, each with the requests waiting in it. The
first dispatcher to take a request of a sequence owns that sequence until it ends; no other
takes its requests, so its state never has to move. A dispatcher claims a new sequence only
while it owns less than its share of the open sequences (or no more than any other
dispatcher), which spreads sequences over the workers. In batch mode a sequence has one
request in a worker at a time; with continuous batching its next request may join a step
while an earlier one still streams.

A sequence ends when a request or its answer says so (the ``ts_request_sequence_end`` header),
when it idles past ``sequenceMaxIdleMSec`` or outlives ``sequenceTimeoutMSec``, when its gRPC
stream ends, or when its worker goes away: the state lives only there, so a sequence is never
handed to another worker (SPEC 6, FIX). An ended sequence's id is remembered, so its next
request is refused saying why instead of silently starting over on empty state; a request with
the start header opens it afresh.
"""
from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from daemon.errors import ServiceUnavailable
from protocol.messages import SEQUENCE_HEADERS

# How many ended sequence ids are remembered (their next request is told why it is refused).
ENDED_MEMORY = 4096


@dataclass(frozen=True)
class SequenceRules:
    """A version's sequence limits, from its settings (TorchServe's model-config.yaml keys)."""

    model: str
    max_open: int             # maxNumSequence, at least batchSize x maxWorkers (as TorchServe)
    max_waiting: int          # maxSequenceJobQueueSize
    idle_s: float             # sequenceMaxIdleMSec; 0: no idle limit
    lifetime_s: float         # sequenceTimeoutMSec; 0: none
    end_header: str = SEQUENCE_HEADERS["end"]

    @classmethod
    def of(cls, mv: Any, end_header: str = SEQUENCE_HEADERS["end"]) -> SequenceRules:
        s = mv.settings
        return cls(mv.name, max(s.max_num_sequence, s.batch_size * max(1, s.max_workers)),
                   s.max_sequence_job_queue_size, s.sequence_max_idle_ms / 1000.0,
                   s.sequence_timeout_ms / 1000.0, end_header)


def refused(model: str, reason: str) -> ServiceUnavailable:
    """TorchServe's answer to a sequence request it cannot take, with torchd's reason."""
    return ServiceUnavailable(
        f'Model "{model}" has no worker to serve inference request. Please use scale workers '
        'API to add workers. If this is a sequence inference, please check if it is closed, or '
        f'expired; or exceeds maxSequenceJobQueueSize ({reason})')


class Sequence:
    __slots__ = ("id", "rules", "owner", "jobs", "running", "expires_at", "idle_timer")

    def __init__(self, sequence_id: str, rules: SequenceRules, now: float) -> None:
        self.id = sequence_id
        self.rules = rules
        self.owner: object | None = None            # the dispatcher serving it
        self.jobs: collections.deque[Any] = collections.deque()   # waiting, in order
        self.running: set[Any] = set()              # in its worker now
        self.expires_at = now + rules.lifetime_s if rules.lifetime_s > 0 else None
        self.idle_timer: asyncio.TimerHandle | None = None

    def stop_idling(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None


class SequenceTable:
    """The open sequences of one model version, by sequence id."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._open: dict[str, Sequence] = {}
        self._ended: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._owned: dict[object, int] = {}   # live dispatchers -> sequences each owns
        self._arrival: asyncio.Future | None = None
        self.model = "?"   # the version's model name, for refusals (set at the first admit)

    def __bool__(self) -> bool:
        return bool(self._open)

    def __len__(self) -> int:
        return len(self._open)

    @property
    def depth(self) -> int:
        return sum(len(seq.jobs) for seq in self._open.values())

    def owner_of(self, sequence_id: str) -> object | None:
        seq = self._open.get(sequence_id)
        return seq.owner if seq is not None else None

    # ---- admission ---------------------------------------------------------------------------

    def admit(self, job: Any, rules: SequenceRules, starting: bool) -> None:
        """Queue ``job`` in its sequence (``job.sequence``), opening it if need be; raises
        ServiceUnavailable (TorchServe's message, torchd's reason) when it cannot."""
        sid, now = job.sequence, self.clock()
        self.model = rules.model
        seq = self._open.get(sid)
        if seq is not None and seq.expires_at is not None and now >= seq.expires_at:
            self._close(seq, f"sequence {sid} expired: open longer than "
                             f"{seq.rules.lifetime_s * 1000:g} ms (sequenceTimeoutMSec)")
            seq = None
        if seq is None:
            reason = self._ended.get(sid)
            if reason is not None and not starting:
                raise refused(rules.model, reason)
            if len(self._open) >= rules.max_open:
                raise refused(rules.model, f"sequence {sid} not opened: {len(self._open)} "
                                           "sequences are open (maxNumSequence)")
            seq = self._open[sid] = Sequence(sid, rules, now)
            self._ended.pop(sid, None)
        elif len(seq.jobs) >= seq.rules.max_waiting:
            raise refused(rules.model, f"sequence {sid} has {len(seq.jobs)} request(s) waiting "
                                       "(maxSequenceJobQueueSize)")
        seq.stop_idling()
        seq.jobs.append(job)
        self._announce()

    def arrival(self) -> asyncio.Future:
        """Done once a request can be taken that could not before (one arrived, a sequence's
        request finished, a worker gave its sequences up): what idle dispatchers wait on
        besides the shared queue."""
        if self._arrival is None or self._arrival.done():
            self._arrival = asyncio.get_running_loop().create_future()
        return self._arrival

    def _announce(self) -> None:
        if self._arrival is not None and not self._arrival.done():
            self._arrival.set_result(None)

    # ---- dispatch ----------------------------------------------------------------------------

    def register(self, owner: object) -> None:
        """A dispatcher starts serving: it may claim sequences from now on."""
        self._owned.setdefault(owner, 0)

    def take(self, owner: object, room: int, overlap: bool = False) -> list[Any]:
        """Up to ``room`` requests for ``owner``'s worker, at most one per sequence: the next
        of each sequence it owns (one not running already, unless ``overlap``: continuous
        batching), then of unowned ones while it owns no more than any other dispatcher."""
        batch: list[Any] = []
        if room <= 0 or not self._open:
            return batch
        for seq in list(self._open.values()):
            if len(batch) >= room:
                break
            if not seq.jobs or (seq.owner is owner and seq.running and not overlap):
                continue
            if seq.owner is None and not self._may_claim(owner):
                continue
            if seq.owner is not None and seq.owner is not owner:
                continue
            job = self._next_live(seq)
            if job is None:
                continue
            if seq.owner is None:
                seq.owner = owner
                self._owned[owner] = self._owned.get(owner, 0) + 1
            seq.running.add(job)
            batch.append(job)
        return batch

    def _may_claim(self, owner: object) -> bool:
        """While it owns fewer than its fair share of the open sequences, or no more than any
        other dispatcher: sequences arriving together spread over the workers."""
        mine = self._owned.get(owner, 0)
        share = -(-len(self._open) // max(1, len(self._owned)))
        return mine < share or all(mine <= count for count in self._owned.values())

    @staticmethod
    def _next_live(seq: Sequence) -> Any | None:
        while seq.jobs:
            job = seq.jobs.popleft()
            if not job.cancelled:
                return job
        return None

    def done(self, job: Any, response: dict[str, Any] | None) -> None:
        """A request of a sequence is over (answered, failed by its handler, or hung up):
        the sequence's next one may go, or the sequence ends if the request or its answer said
        so, or it starts idling."""
        seq = self._open.get(job.sequence)
        if seq is None or job not in seq.running:
            return
        seq.running.discard(job)
        ended = _ends(job, response, seq)
        if ended:
            for sid in ended:
                other = self._open.get(sid)
                if other is not None:
                    self._close(other, f"sequence {sid} was ended")
            if seq.id in ended:
                return
        if seq.jobs:
            self._announce()
        elif not seq.running:
            self._idle(seq)

    def _idle(self, seq: Sequence) -> None:
        if seq.rules.idle_s > 0 and seq.idle_timer is None:
            seq.idle_timer = asyncio.get_running_loop().call_later(
                seq.rules.idle_s, self._expire_idle, seq)

    def _expire_idle(self, seq: Sequence) -> None:
        seq.idle_timer = None
        if self._open.get(seq.id) is seq and not seq.jobs and not seq.running:
            self._close(seq, f"sequence {seq.id} expired: no request for "
                             f"{seq.rules.idle_s * 1000:g} ms (sequenceMaxIdleMSec)")

    def put_front(self, jobs: Iterable[Any]) -> None:
        """Requests taken but never sent (their worker went away first): back first in their
        sequences, if those are still open (the worker's loss ends them right after)."""
        for job in reversed(list(jobs)):
            seq = self._open.get(job.sequence)
            if seq is not None:
                seq.running.discard(job)
                seq.jobs.appendleft(job)
            else:
                job.fail(refused(self.model, f"sequence {job.sequence} ended"))
        self._announce()

    def lose(self, owner: object, reason: str) -> None:
        """``owner``'s worker is gone, and the state of its sequences with it: they end, and
        what waits in them is refused (never sent to another worker)."""
        self._owned.pop(owner, None)
        for seq in [s for s in self._open.values() if s.owner is owner]:
            self._close(seq, f"sequence {seq.id} lost its state: {reason}")
        self._announce()   # the other dispatchers may claim more now

    def remove(self, job: Any) -> None:
        """A waiting request whose client hung up."""
        seq = self._open.get(job.sequence)
        if seq is not None and job in seq.jobs:
            seq.jobs.remove(job)
            if not seq.jobs and not seq.running:
                self._idle(seq)

    def end(self, sequence_id: str, reason: str) -> None:
        """Close a sequence (its gRPC stream ended); what still waits in it is refused."""
        seq = self._open.get(sequence_id)
        if seq is not None:
            self._close(seq, reason)

    def drain(self) -> list[Any]:
        """Every waiting request of every sequence (the version is going away)."""
        jobs = [job for seq in self._open.values() for job in seq.jobs]
        for seq in self._open.values():
            seq.jobs.clear()
        return jobs

    def _close(self, seq: Sequence, reason: str) -> None:
        if self._open.get(seq.id) is not seq:
            return
        del self._open[seq.id]
        seq.stop_idling()
        if seq.owner is not None and seq.owner in self._owned:
            self._owned[seq.owner] -= 1
        self._ended[seq.id] = reason
        self._ended.move_to_end(seq.id)
        while len(self._ended) > ENDED_MEMORY:
            self._ended.popitem(last=False)
        error = refused(seq.rules.model, reason)
        while seq.jobs:
            seq.jobs.popleft().fail(error)


def _ends(job: Any, response: dict[str, Any] | None, seq: Sequence) -> set[str]:
    """The sequences a finished request ends: its own when the request carried the end header
    set to true, and those its answer names in that header (TorchServe: ids joined by ';')."""
    name = seq.rules.end_header
    ended: set[str] = set()
    for key, value in job.request.get("headers") or ():
        if key.lower() == name and str(value).strip().lower() == "true":
            ended.add(seq.id)
    for key, value in (response or {}).get("headers") or ():
        if key.lower() == name:
            ended.update(part.strip() for part in str(value).split(";") if part.strip())
    return ended
