"""StreamPredictions2: a sequence of requests to a stateful model over one stream.

Requests are taken one at a time, each answered before the next is submitted; the handler sees
each one's sequence id (``context.get_sequence_id``). For a model with ``sequenceBatching`` every
request of one ``sequence_id`` runs on the worker holding that sequence's state, in order
(daemon/models/sequences.py). A request without a ``sequence_id`` belongs to the stream's own
sequence (TorchServe's ``ts-seq-<uuid>``, opened with the start header), whose id the answers
carry. An input named ``ts_request_sequence_start`` or ``ts_request_sequence_end`` set to true
reaches the handler as that header (TorchServe's way to say it over gRPC). A failed request is
answered in ``PredictionResponse.status`` and the stream goes on. The stream's sequences end
when the client ends the stream, or once no request came for ``sequenceMaxIdleMSec``: the call
then ends with DEADLINE_EXCEEDED.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from daemon.errors import RequestTimeout, TorchdError
from daemon.models.call import Predictions, new_request_id
from daemon.models.registry import ModelVersion
from daemon.rpc.generated import inference_pb2 as pb
from daemon.rpc.generated import rpc_status_pb2
from daemon.rpc.jobs import input_parameters, outcome, request_headers
from daemon.rpc.status import abort, grpc_code

_END = object()


async def stream_sequence(predictions: Predictions, requests: AsyncIterator[pb.PredictionsRequest],
                          context: grpc.aio.ServicerContext,
                          ) -> AsyncIterator[pb.PredictionResponse]:
    inbox: asyncio.Queue = asyncio.Queue()
    reader = asyncio.ensure_future(_read(requests, inbox))
    stream = _Sequence(predictions, request_headers(context))
    try:
        while True:
            request = await stream.next_request(inbox)
            if request is _END:
                return
            if isinstance(request, TorchdError):
                await abort(context, request)
            yield await stream.run(request)
    finally:
        reader.cancel()
        stream.end()


async def _read(requests: AsyncIterator[Any], inbox: asyncio.Queue) -> None:
    """Requests into ``inbox`` as they come (so waiting for one can time out without
    cancelling a read of the call), then _END."""
    with contextlib.suppress(Exception):
        async for request in requests:
            inbox.put_nowait(request)
    inbox.put_nowait(_END)


class _Sequence:
    def __init__(self, predictions: Predictions, headers: list[list[str]]) -> None:
        self.predictions = predictions
        self.headers = headers
        self.own_id = f"ts-seq-{new_request_id()}"
        self.own_opened = False
        self.opened: dict[tuple[int, str], ModelVersion] = {}
        self.idle: tuple[float, str, str] | None = None   # seconds, model, sequence id

    async def next_request(self, inbox: asyncio.Queue) -> Any:
        """The next request; _END when the client ended the stream; the error that ends an
        idle sequence."""
        if self.idle is None:
            return await inbox.get()
        seconds, model, sequence = self.idle
        try:
            return await asyncio.wait_for(inbox.get(), seconds)
        except asyncio.TimeoutError:
            return RequestTimeout(f"Sequence {sequence} of model {model} ended: no request for "
                                  f"{seconds * 1000:g} ms (sequenceMaxIdleMSec)")

    async def run(self, request: pb.PredictionsRequest) -> pb.PredictionResponse:
        sequence = request.sequence_id if request.sequence_id else self.own_id
        try:
            body = await self._predict(request, sequence)
        except TorchdError as exc:
            status = rpc_status_pb2.Status(code=grpc_code(exc.status).value[0],
                                           message=exc.message)
            return pb.PredictionResponse(sequence_id=sequence, status=status)
        return pb.PredictionResponse(prediction=body, sequence_id=sequence)

    async def _predict(self, request: pb.PredictionsRequest, sequence: str) -> bytes:
        opens = sequence == self.own_id and not self.own_opened
        call = self.predictions.start(request.model_name, request.model_version,
                                      self.headers + _sequence_flags(
                                          request, self.predictions.sequence_names),
                                      input_parameters(request.input.items()),
                                      sequence=sequence, opens=opens)
        self.own_opened = self.own_opened or opens
        self.opened[(id(call.mv), sequence)] = call.mv
        self.idle = _idle_limit(call.mv, sequence)
        return await outcome(call)

    def end(self) -> None:
        """Close every sequence this stream opened: their workers are free for others."""
        for (_, sequence), mv in self.opened.items():
            mv.queue.sequences.end(sequence, f"sequence {sequence} ended with its gRPC stream")


def _sequence_flags(request: pb.PredictionsRequest, names: dict[str, str],
                    ) -> list[list[str]]:
    """The start and end flags a client put in the request's input map, as headers."""
    flags = []
    for name in (names["start"], names["end"]):
        value = request.input.get(name)
        if value is not None and value.decode("utf-8", "replace").strip().lower() == "true":
            flags.append([name, "true"])
    return flags


def _idle_limit(mv: ModelVersion, sequence: str) -> tuple[float, str, str] | None:
    value = mv.settings.sequence_max_idle_ms
    if value <= 0:
        return None
    return value / 1000.0, mv.name, sequence
