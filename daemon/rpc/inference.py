"""TorchServe's InferenceAPIsService: Ping, Predictions, StreamPredictions (the parts a handler
sends with send_intermediate_predict_response, then its result) and StreamPredictions2 (a
sequence, daemon/rpc/sequences.py)."""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from daemon.core import Core
from daemon.errors import TorchdError
from daemon.rpc import sequences
from daemon.rpc.generated import inference_pb2 as pb
from daemon.rpc.generated import inference_pb2_grpc as pb_grpc
from daemon.rpc.jobs import input_parameters, outcome, parts, request_headers
from daemon.jsonlayout import document_text
from daemon.rpc.status import abort, answer

Context = grpc.aio.ServicerContext


class InferenceService(pb_grpc.InferenceAPIsServiceServicer):
    def __init__(self, core: Core) -> None:
        self.health = core.health
        self.predictions = core.predictions

    async def Ping(self, request: Any, context: Context) -> pb.TorchServeHealthResponse:
        status = "Healthy" if self.health.healthy() else "Unhealthy"
        return pb.TorchServeHealthResponse(health=document_text({"status": status}))

    async def Predictions(self, request: pb.PredictionsRequest,
                          context: Context) -> pb.PredictionResponse:
        return await answer(context, self._predict(request, context))

    async def _predict(self, request: pb.PredictionsRequest,
                       context: Context) -> pb.PredictionResponse:
        call = self.predictions.start(request.model_name, request.model_version,
                                      request_headers(context),
                                      input_parameters(request.input.items()))
        return pb.PredictionResponse(prediction=await outcome(call))

    async def StreamPredictions(self, request: pb.PredictionsRequest,
                                context: Context) -> AsyncIterator[pb.PredictionResponse]:
        try:
            call = self.predictions.start(request.model_name, request.model_version,
                                          request_headers(context),
                                          input_parameters(request.input.items()))
        except TorchdError as exc:
            await abort(context, exc)
        try:
            async for body in parts(call):
                yield pb.PredictionResponse(prediction=body)
        except TorchdError as exc:
            await abort(context, exc)

    async def StreamPredictions2(self, request_iterator: AsyncIterator[pb.PredictionsRequest],
                                 context: Context) -> AsyncIterator[pb.PredictionResponse]:
        async for response in sequences.stream_sequence(self.predictions, request_iterator,
                                                        context):
            yield response
