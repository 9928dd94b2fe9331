"""One prediction call: a request from its arrival to its last event, whatever the protocol.

REST (both of the inference listener's paths) and gRPC only turn bytes into a call and its
events into bytes. The call owns the rest, the same for all of them: the request id, the
submission to the model version's queue (refused at once when no worker can serve it, when
none is free to take it under ``useJobTicket``, or the queue is full), the client's hang-up (a
job not yet dispatched is dropped, never run), the client timeout (``clientTimeoutInMills``: 504
at that moment, the job dropped from the queue or its late answer dropped), flow control of
streamed parts, and the outcome counted exactly once in the metrics (the status of its first
event, when the response starts).
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

from daemon.errors import RequestTimeout, TorchdError, no_worker_error
from daemon.models.job import DEFAULT_STREAM_LIMITS, Event, Job, Part, StreamLimits
from daemon.models.queue import QueueFull, queue_full_error
from daemon.models.registry import ModelVersion, Registry
from daemon.models.sequences import SequenceRules
from protocol import messages


def new_request_id() -> str:
    """A random (version 4) UUID in its usual text form: the same ids as str(uuid.uuid4()),
    made from the hex of 16 random bytes without building a UUID object (a third the cost).
    Every request gets one, whatever its protocol; the worker sees it as the request's id."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


# RFC 4122 variant bits (10xx) in the first hex digit of the fourth group
_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}


class Servers(Protocol):
    """Whether a model version has a worker to serve a request (the Supervisor answers)."""

    def can_serve(self, mv: ModelVersion) -> bool: ...

    def free_workers(self, mv: ModelVersion) -> int: ...   # useJobTicket's count


class RequestCounter(Protocol):
    def observe_request(self, model: str, version: str, status: int, queue_us: float,
                        latency_us: float, named_version: bool = False) -> None: ...


class PredictionCall:
    """One submitted request; read its events with ``next_event`` (a reader with a task) or
    ``listen`` (a reader driven by callbacks). The first event is counted as the outcome."""

    __slots__ = ("mv", "job", "named", "status", "sequence_header", "_counter", "_listener",
                 "_timer")

    def __init__(self, counter: RequestCounter, mv: ModelVersion, job: Job,
                 named: bool) -> None:
        self.mv = mv
        self.job = job
        self.named = named        # the request named its version (a metrics label)
        self.status = 0           # the outcome, once counted
        self.sequence_header = messages.SEQUENCE_HEADERS["id"]
        self._counter = counter
        self._listener: Callable[[Event], None] | None = None
        self._timer: asyncio.TimerHandle | None = None   # clientTimeoutInMills, when set

    @property
    def id(self) -> str:
        return self.job.id

    async def next_event(self) -> Event:
        event = await self.job.next_event()
        self.record(event.status)
        if self.job.sequence is not None:
            self._name_sequence(event)
        return event

    def _name_sequence(self, event: Event) -> None:
        """A sequence's answers carry its id (``ts_request_sequence_id``) unless the handler
        set it: a client that let the server open the sequence learns the id to send next."""
        if isinstance(event, Part):
            headers = event.response.setdefault("headers", [])
            name = self.sequence_header
            if not any(key.lower() == name for key, _ in headers):
                headers.append([name, self.job.sequence])

    def listen(self, listener: Callable[[Event], None]) -> None:
        """Hand each event to ``listener`` as it happens (see Job.listen)."""
        self._listener = listener
        self.job.listen(self._on_event)

    def _on_event(self, event: Event) -> None:
        self.record(event.status)
        if self.job.sequence is not None:
            self._name_sequence(event)
        listener = self._listener
        if event.final:
            self._listener = None   # no reference cycle outlives the request
        if listener is not None:
            listener(event)

    def hang_up(self) -> None:
        """The client went away: a job still waiting is dropped (never run); the reader
        gets ``Gone``."""
        if not self.job.finished and not self.job.cancelled:
            self.mv.queue.abandon(self.job)

    def pause(self) -> bool:
        """The client is not taking the parts: stop them at the worker, where that stalls
        nobody else; False where it would (the reader then cuts the stream off once the
        client is ``max_stream_buffer_size`` behind: ``cut_off``)."""
        return self.job.hold()

    def cut_off(self, why: str) -> None:
        """End a stream whose client is too far behind: the request leaves its worker's
        batch, and the listener (the reader) gets a Failure."""
        self.job.cut_off(why)

    def resume(self) -> None:
        self.job.release()

    def time_out_after(self, ms: int) -> None:
        """Answer 504 unless a response has started within ``ms`` milliseconds from now (the
        arrival: ``Predictions.start`` calls it)."""
        self._timer = asyncio.get_running_loop().call_later(ms / 1000.0, self._time_out, ms)

    def _time_out(self, ms: int) -> None:
        self._timer = None
        if not self.job.finished and not self.job.cancelled:
            self.mv.queue.time_out(self.job, RequestTimeout(
                f'Model "{self.mv.name}" did not answer within {ms} ms (clientTimeoutInMills)'))

    def record(self, status: int) -> None:
        """Count the outcome (once): arrival, dispatch and answer times (TorchServe's ts_*
        metrics). The response has started: the client timeout no longer applies."""
        if self.status:
            return
        self.status = status
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        job, now = self.job, time.monotonic()
        dispatched = job.dispatched_at or now
        self._counter.observe_request(self.mv.name, self.mv.version, status,
                                      (dispatched - job.arrival) * 1e6,
                                      (now - job.arrival) * 1e6, named_version=self.named)


class Predictions:
    """Where every front end starts a prediction call."""

    def __init__(self, registry: Registry, servers: Servers, counter: RequestCounter,
                 sequence_headers: dict[str, str] | None = None,
                 stream_limits: StreamLimits = DEFAULT_STREAM_LIMITS) -> None:
        self.registry = registry
        self.servers = servers
        self.counter = counter
        # what a client that is not reading a stream may cost (max_stream_buffer_size,
        # response_send_timeout)
        self.stream_limits = stream_limits
        # the names of TorchServe's sequence headers (config ts_header_key_sequence_*)
        self.sequence_names = dict(sequence_headers or messages.SEQUENCE_HEADERS)

    def start(self, name: str, version: str | None, headers: list[list[str]],
              params: list[dict[str, Any]], *, request_id: str | None = None,
              sequence: str | None = None, opens: bool = False) -> PredictionCall:
        """Submit a request for model ``name`` (``version``: None or "" for the default).

        ``sequence``: the request's sequence id when its protocol carries one outside the
        headers (gRPC StreamPredictions2; ``opens``: an id made for a new sequence). A model with
        ``sequenceBatching`` reads it from the ``ts_request_sequence_id`` header otherwise, and
        opens a sequence of its own for a request without one (as TorchServe). Either way the
        handler sees the id in that header (``context.get_sequence_id``).

        Raises TorchdError as TorchServe answers: unknown model or version (not counted: no
        model version to count it for), no worker (with ``useJobTicket``: none free), queue
        full, a sequence that cannot take the request, version going away (counted).
        """
        mv = self.registry.get(name, version or None)
        rid = request_id or new_request_id()
        starting = False
        if sequence is not None or mv.settings.sequence_batching:
            headers, sequence, starting = sequence_headers(headers, sequence, opens,
                                                           self.sequence_names)
        job = Job(rid, messages.request(rid, headers, params), time.monotonic(),
                  self.stream_limits)
        if mv.settings.sequence_batching:
            job.sequence = sequence
        call = PredictionCall(self.counter, mv, job, bool(version))
        if job.sequence is not None:
            call.sequence_header = self.sequence_names["id"]
        try:
            if not (self.servers.free_workers(mv) > 0 if mv.settings.use_job_ticket
                    else self.servers.can_serve(mv)):
                # useJobTicket (TorchServe's job tickets): a worker must be free to take it now
                raise no_worker_error(mv.name)
            try:
                if job.sequence is not None:
                    rules = SequenceRules.of(mv, self.sequence_names["end"])
                    mv.queue.submit_sequence(job, rules, starting)
                else:
                    mv.queue.submit(job)
            except QueueFull:
                raise queue_full_error(mv.name) from None
        except TorchdError as exc:
            call.record(exc.status)
            raise
        if mv.settings.client_timeout_ms > 0:
            call.time_out_after(mv.settings.client_timeout_ms)
        return call


def sequence_headers(headers: list[list[str]], sequence: str | None, opens: bool,
                     names: dict[str, str]) -> tuple[list[list[str]], str, bool]:
    """(headers naming the sequence, its id, whether the request opens it): ``sequence`` (or
    else the id header) names it; with neither, a new id (TorchServe's ``ts-seq-<uuid>``) and
    the start header. The start header sent as true also opens it. ``names``: the headers'
    names (id, start), lower-cased."""
    id_name, start_name = names["id"], names["start"]
    sent = {key.lower(): value for key, value in headers}
    sequence = sequence or sent.get(id_name) or None
    if sequence is None:
        sequence, opens = f"ts-seq-{new_request_id()}", True
    starting = opens or str(sent.get(start_name, "")).strip().lower() == "true"
    replaced = (id_name, start_name) if starting else (id_name,)
    kept = [pair for pair in headers if pair[0].lower() not in replaced]
    kept.append([id_name, sequence])
    if starting:
        kept.append([start_name, "true"])
    return kept, sequence, starting
