"""A gRPC prediction on its way through the same queues as REST's: the job made from a request,
its submission, its outcome counted, and the handler's answer or error read back."""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

import grpc

from daemon.errors import InternalServerError, TorchdError
from daemon.models.queue import Job
from daemon.models.registry import ModelVersion
from daemon.models.submission import record_outcome, submit_job
from protocol import messages


def request_headers(context: grpc.aio.ServicerContext) -> list[list[str]]:
    """The call's metadata as the request headers a handler reads (binary ``-bin`` keys
    left out: headers are text)."""
    return [[key, value] for key, value in context.invocation_metadata() or ()
            if isinstance(value, str)]


def new_job(headers: list[list[str]], params: list[dict[str, Any]],
            sequence: str | None = None) -> Job:
    rid = str(uuid.uuid4())
    job = Job(rid, messages.request(rid, headers, params), time.monotonic())
    job.sequence = sequence
    return job


def input_parameters(inputs: Iterable[tuple[str, bytes]]) -> list[dict[str, Any]]:
    """PredictionsRequest.input: one handler parameter per entry, bytes as sent."""
    return [messages.parameter(name, None, value) for name, value in inputs]


class Submitter:
    """Looks a model version up and queues a job for it, as REST's prediction path does."""

    def __init__(self, core: Any) -> None:
        self.registry = core.registry
        self.supervisor = core.supervisor
        self.metrics = core.metrics

    def submit(self, name: str, version: str, job: Job) -> ModelVersion:
        """Raises TorchdError (unknown model, no worker, queue full) as REST would answer."""
        mv = self.registry.get(name, version or None)
        submit_job(self.supervisor, self.metrics, mv, job, named=bool(version))
        return mv

    def record(self, mv: ModelVersion, job: Job, status: int, named: bool) -> None:
        record_outcome(self.metrics, mv, job, status, named)

    async def first_event(self, mv: ModelVersion, job: Job) -> tuple[str, Any]:
        """The job's first event; a call cancelled meanwhile drops the job from the queue
        (never run, if it was still waiting)."""
        try:
            return await job.next_event()
        except BaseException:
            mv.queue.abandon(job)
            raise

    async def final_event(self, mv: ModelVersion, job: Job, named: bool) -> tuple[str, Any]:
        """The job's outcome, past any parts a streaming handler sends (a unary answer is
        its result), counted in the metrics."""
        kind, payload = await self.first_event(mv, job)
        while kind == "part":
            kind, payload = await self.first_event(mv, job)
        self.record(mv, job, event_status(kind, payload), named)
        return kind, payload


def answer_body(kind: str, payload: Any) -> bytes:
    """The body of a part or final answer; raises the TorchdError a failure means."""
    if kind == "error":
        raise payload
    if kind == "gone":   # only after the call was cancelled: nobody reads this
        raise TorchdError("The request was dropped", status=499)
    if payload.get("error"):
        raise InternalServerError(payload.get("reason") or "Prediction failed",
                                  status=payload["status"])
    status = payload.get("status") or 200
    if status >= 400:   # the handler set an error status itself: its body says why
        body = payload.get("body") or b""
        raise TorchdError(body.decode("utf-8", "replace") or payload.get("reason") or "",
                          status=status)
    return payload.get("body") or b""


def event_status(kind: str, payload: Any) -> int:
    if kind == "error":
        return payload.status
    if kind == "gone":
        return 499   # as REST counts a client that hung up
    return payload.get("status") or 200
