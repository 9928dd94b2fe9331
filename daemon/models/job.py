"""A job: one prediction request on its way through a model version's queue to a worker and back,
and the typed events it ends with.

A job's events, in order: zero or more ``Part`` (a handler's intermediate responses), then
exactly one ``Answer`` or ``Failure``; or ``Gone`` once the client has hung up. Streams that
outlive a batch (sequences, continuous batching) are the same shape: parts for as long as the
worker sends them, then one end.

Flow control: a job whose parts are not being taken (a client that stops reading) *holds* the
worker it runs on, whose connection then stops reading that worker's socket; the worker's
writes block, so the handler pauses instead of the daemon buffering its parts without bound.
Only where that pauses nobody else: a worker whose batch has other requests, a running batch
(continuous batching) or batches in flight (async workers) serves others, whom one client must
not stall. There the job keeps its parts (its *backlog*) up to ``limits.buffer_size`` bytes
(``max_stream_buffer_size``), and past that its answer is cut off: the reader gets a Failure,
and the request leaves the worker's batch as a hang-up does. A job that holds its worker for
``limits.send_timeout`` (``response_send_timeout``) without its reader taking a part is cut off
the same way, so a reader the listener's sweep does not watch (gRPC) cannot keep a worker
paused until its batch times out.
"""
from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, Union

from daemon.errors import BadRequest, InternalServerError, StreamCutOff, TorchdError
from protocol import messages

logger = logging.getLogger(__name__)

# A job that queues this many undelivered parts holds its worker connection until the reader
# has taken it back down to PARTS_LOW (a reader that awaits next_event: the ASGI path, gRPC).
PARTS_HIGH = 16
PARTS_LOW = 4
# What a queued part costs besides its body (the response dict, the Part): a backlog of tokens
# of a few bytes each is bounded by the memory it holds, not by its bodies alone.
PART_OVERHEAD = 256


@dataclass(frozen=True)
class StreamLimits:
    """What a stream's reader may cost (config: max_stream_buffer_size, response_send_timeout):
    the weight of the parts kept for it where its worker cannot be paused, and how long it may
    keep its worker paused without taking a part."""

    buffer_size: int = 4 * 1024 * 1024
    send_timeout: float = 60.0


DEFAULT_STREAM_LIMITS = StreamLimits()


class Part:
    """An intermediate response (``send_intermediate_predict_response``)."""

    __slots__ = ("response",)
    final = False

    def __init__(self, response: dict[str, Any]) -> None:
        self.response = response

    @property
    def status(self) -> int:
        return self.response.get("status") or 200

    @property
    def weight(self) -> int:
        """The memory it holds while queued, roughly: its body and PART_OVERHEAD."""
        body = self.response.get("body")
        return PART_OVERHEAD + (len(body) if isinstance(body, (bytes, bytearray, str)) else 0)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Part) and type(other) is type(self) \
            and other.response == self.response

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.response!r})"

    __hash__ = None  # type: ignore[assignment]


class Answer(Part):
    """The handler's response for this request: the last event."""

    __slots__ = ()
    final = True


class Failure:
    """The request failed (refused, timed out, its worker died, the handler raised)."""

    __slots__ = ("error",)
    final = True

    def __init__(self, error: TorchdError) -> None:
        self.error = error

    @property
    def status(self) -> int:
        return self.error.status

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Failure) and other.error is self.error

    def __repr__(self) -> str:
        return f"Failure({self.error!r})"

    __hash__ = None  # type: ignore[assignment]


class Gone:
    """The client hung up: nobody is listening any more."""

    __slots__ = ()
    final = True
    status = 499   # nginx's "client closed request", for the metrics only: nothing is sent

    def __repr__(self) -> str:
        return "GONE"


GONE = Gone()
Event = Union[Part, Answer, Failure, Gone]


def worker_error(response: dict[str, Any]) -> TorchdError:
    """A handler's failure. TorchServe types every one InternalServerException, whatever the
    status (513 from a PredictionException, 503 "Prediction failed", 507 ...). A request the
    worker refused before its handler ran (JSON nested too deeply) is the client's error."""
    if response.get("error_type") == messages.BAD_REQUEST:
        return BadRequest(response.get("reason") or "Bad request")
    return InternalServerError(response.get("reason") or "Prediction failed",
                               status=response.get("status") or 503)


class FlowSource(Protocol):
    """Where a running job's parts come from (its worker's dispatcher)."""

    def hold(self, job: Job) -> bool:
        """Pause the worker until ``release``; False (nothing paused) where that would pause
        other requests too."""

    def release(self, job_id: str) -> None: ...


class Job:
    """One inference request on its way to a worker and back (see the module's docstring).

    Most requests see exactly one event, so a reader waits on a bare future rather than an
    asyncio.Queue (a queue and its getters cost more than the rest of the job). A reader with
    no task to wake (the inference listener's direct path) ``listen``s instead.
    """

    __slots__ = ("id", "request", "arrival", "cancelled", "dispatched_at", "finished",
                 "redispatched", "streamed", "sequence", "source", "held", "lagging",
                 "backlog", "limits", "_held_timer", "_taken_at", "_events", "_waiter",
                 "_listener")

    def __init__(self, id: str, request: dict[str, Any], arrival: float,
                 limits: StreamLimits = DEFAULT_STREAM_LIMITS) -> None:
        self.id = id
        self.request = request
        self.arrival = arrival
        self.cancelled = False
        self.dispatched_at: float | None = None
        self.finished = False
        self.redispatched = False   # sent again once after its worker died with it
        self.streamed = False       # a part has gone to the client: it can never run again
        self.sequence: str | None = None   # runs on its sequence's worker (sequences.py)
        self.source: FlowSource | None = None   # the dispatcher of the worker running it
        self.held = False
        self.lagging = False    # behind, and its source would not pause the worker for it
        self.backlog = 0        # the weight of the parts queued for the reader
        self.limits = limits
        self._held_timer: asyncio.TimerHandle | None = None   # the hold's send_timeout
        self._taken_at = 0.0    # while held: when its reader last took a part
        self._events: collections.deque[Event] = collections.deque()
        self._waiter: asyncio.Future | None = None
        self._listener: Callable[[Event], None] | None = None

    # ---- what the dispatcher and the queue say ---------------------------------------------

    def send_part(self, response: dict[str, Any]) -> None:
        if self.finished or self.cancelled:
            return   # nobody reads them now: kept, they would hold the worker for good
        if response.get("error"):
            self.fail(worker_error(response))
            return
        self.streamed = True
        part = Part(response)
        self._put(part)
        if self._listener is not None:
            return
        self.backlog += part.weight
        over = self.backlog > self.limits.buffer_size
        if (over or len(self._events) >= PARTS_HIGH) and not self.held \
                and (self.lagging or not self.hold()):
            self.lagging = True
            if over:
                self.cut_off(f"its client fell more than {self.limits.buffer_size} bytes "
                             "behind (max_stream_buffer_size) while its worker serves other "
                             "requests too")

    def finish(self, response: dict[str, Any]) -> None:
        if self.finished:
            return
        if response.get("error"):
            self.fail(worker_error(response))
            return
        self.finished = True
        self._end(Answer(response))

    def fail(self, error: TorchdError) -> None:
        if not self.finished:
            self.finished = True
            self._end(Failure(error))

    def cut_off(self, why: str) -> None:
        """A stream whose client is too far behind (past its buffer where its worker serves
        others too, or taking nothing for the send timeout while it holds its worker): its
        queued parts are dropped, its reader gets a Failure (the connection is cut, the body
        broken), and it leaves the worker's batch as a hang-up does (``cancelled``)."""
        if self.finished or self.cancelled:
            return
        self.cancelled = True
        self._events.clear()
        self.backlog = 0
        logger.warning("request %s: stream cut off: %s", self.id, why)
        self.fail(StreamCutOff(f"Stream cut off: {why}"))

    def abandon(self) -> None:
        """The client went away: never dispatch this job; wake whoever waits on it."""
        self.cancelled = True
        self._end(GONE)

    # ---- what the reader does --------------------------------------------------------------

    async def next_event(self) -> Event:
        """The next event, in order; waits while there is none."""
        if not self._events:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        event = self._events.popleft()
        if not event.final:
            self.backlog -= event.weight   # type: ignore[union-attr]
        if self.held:
            if len(self._events) <= PARTS_LOW:
                self.release()
            else:
                self._taken_at = asyncio.get_running_loop().time()
        return event

    def listen(self, listener: Callable[[Event], None]) -> None:
        """From now on each event is handed to ``listener(event)`` the moment it happens, in
        place of ``next_event``; events already queued go first. The listener runs inside
        whoever raised the event (the dispatcher, an abandon), so it must not raise. It is
        dropped after the last event (no reference cycle outlives the request)."""
        self._listener = listener
        self.backlog = 0
        while self._events:
            listener(self._events.popleft())
        if self.held:
            self.release()

    def hold(self) -> bool:
        """Stop the parts at their source (the worker) until ``release``; False where the
        source would not (its worker serves others too), or nothing runs to stop."""
        if not self.held and not self.finished and not self.cancelled \
                and self.source is not None:
            self.held = self.source.hold(self)
            if self.held and self._listener is None:
                # a listener's connection is watched by the listener's sweep (HTTP's direct
                # path); a reader that awaits its parts (gRPC, ASGI) by this timer
                loop = asyncio.get_running_loop()
                self._taken_at = loop.time()
                self._held_timer = loop.call_later(self.limits.send_timeout,
                                                   self._held_too_long)
        return self.held

    def release(self) -> None:
        if self.held:
            self.held = False
            if self._held_timer is not None:
                self._held_timer.cancel()
                self._held_timer = None
            if self.source is not None:
                self.source.release(self.id)

    def _held_too_long(self) -> None:
        self._held_timer = None
        if not self.held:
            return
        loop = asyncio.get_running_loop()
        left = self._taken_at + self.limits.send_timeout - loop.time()
        if left > 0:   # its reader took a part meanwhile: the time counts from then
            self._held_timer = loop.call_later(left, self._held_too_long)
            return
        self.cut_off(f"its client took none of it for {self.limits.send_timeout:g} s "
                     "(response_send_timeout)")

    def _end(self, event: Event) -> None:
        self._put(event)
        if self.held:
            self.release()
        self._listener = None

    def _put(self, event: Event) -> None:
        if self._listener is not None:
            self._listener(event)
            return
        self._events.append(event)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
