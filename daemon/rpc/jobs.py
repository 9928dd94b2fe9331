"""A gRPC prediction as a prediction call (daemon/models/call.py, started with
``core.predictions.start``): the call's request made from the gRPC request, and its events turned
into answers. Submission, hang-ups, flow control and
the outcome's count are the call's, as on REST."""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc

from daemon.errors import TorchdError
from daemon.models.call import PredictionCall
from daemon.models.job import Failure, Gone, Part
from protocol import messages


def request_headers(context: grpc.aio.ServicerContext) -> list[list[str]]:
    """The call's metadata as the request headers a handler reads (binary ``-bin`` keys
    left out: headers are text)."""
    return [[key, value] for key, value in context.invocation_metadata() or ()
            if isinstance(value, str)]


def input_parameters(inputs: Iterable[tuple[str, bytes]]) -> list[dict[str, Any]]:
    """PredictionsRequest.input: one handler parameter per entry, bytes as sent."""
    return [messages.parameter(name, None, value) for name, value in inputs]


def answer_body(event: Part) -> bytes:
    """The body of a part or an answer; raises the TorchdError a handler's error status means
    (its body says why)."""
    response = event.response
    status = event.status
    if status >= 400:
        body = response.get("body") or b""
        raise TorchdError(body.decode("utf-8", "replace") or response.get("reason") or "",
                          status=status)
    return response.get("body") or b""


async def outcome(call: PredictionCall) -> bytes:
    """A unary answer: the call's last event (past any parts a streaming handler sends) as its
    body; raises the TorchdError a failure means."""
    body = b""
    async for body in parts(call):
        pass
    return body


async def parts(call: PredictionCall) -> AsyncIterator[bytes]:
    """Each part's body, then the answer's; raises the TorchdError a failure means. A call
    cancelled meanwhile (the client went away) hangs up: a job still waiting never runs."""
    try:
        while True:
            event = await call.next_event()
            if isinstance(event, Failure):
                raise event.error
            if isinstance(event, Gone):   # only once the call was cancelled: nobody reads
                return
            yield answer_body(event)
            if event.final:
                return
    except BaseException:
        call.hang_up()
        raise
