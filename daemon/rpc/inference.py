"""TorchServe's InferenceAPIsService: Ping, Predictions, StreamPredictions (the parts a handler
sends with send_intermediate_predict_response, then its result) and StreamPredictions2 (a
sequence, daemon/rpc/sequences.py)."""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from daemon.errors import TorchdError
from daemon.rpc import sequences
from daemon.rpc.generated import inference_pb2 as pb
from daemon.rpc.generated import inference_pb2_grpc as pb_grpc
from daemon.rpc.jobs import Submitter, answer_body, event_status, input_parameters, new_job, \
    request_headers
from daemon.rpc.status import abort, answer, json_text

Context = grpc.aio.ServicerContext


class InferenceService(pb_grpc.InferenceAPIsServiceServicer):
    def __init__(self, core: Any) -> None:
        self.health = core.health
        self.submitter = Submitter(core)

    async def Ping(self, request: Any, context: Context) -> pb.TorchServeHealthResponse:
        status = "Healthy" if self.health.healthy() else "Unhealthy"
        return pb.TorchServeHealthResponse(health=json_text({"status": status}))

    async def Predictions(self, request: pb.PredictionsRequest,
                          context: Context) -> pb.PredictionResponse:
        return await answer(context, self._predict(request, context))

    async def _predict(self, request: pb.PredictionsRequest,
                       context: Context) -> pb.PredictionResponse:
        job = new_job(request_headers(context), input_parameters(request.input.items()))
        mv = self.submitter.submit(request.model_name, request.model_version, job)
        kind, payload = await self.submitter.final_event(mv, job, bool(request.model_version))
        return pb.PredictionResponse(prediction=answer_body(kind, payload))

    async def StreamPredictions(self, request: pb.PredictionsRequest,
                                context: Context) -> AsyncIterator[pb.PredictionResponse]:
        job = new_job(request_headers(context), input_parameters(request.input.items()))
        try:
            mv = self.submitter.submit(request.model_name, request.model_version, job)
        except TorchdError as exc:
            await abort(context, exc)
        named, recorded = bool(request.model_version), False
        while True:
            kind, payload = await self.submitter.first_event(mv, job)
            if kind == "gone":
                return
            if not recorded:
                self.submitter.record(mv, job, event_status(kind, payload), named)
                recorded = True
            try:
                body = answer_body(kind, payload)
            except TorchdError as exc:
                await abort(context, exc)
            yield pb.PredictionResponse(prediction=body)
            if kind == "final":
                return

    async def StreamPredictions2(self, request_iterator: AsyncIterator[pb.PredictionsRequest],
                                 context: Context) -> AsyncIterator[pb.PredictionResponse]:
        async for response in sequences.stream_sequence(self.submitter, request_iterator,
                                                        context):
            yield response
