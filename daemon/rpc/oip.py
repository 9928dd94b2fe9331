"""The Open Inference Protocol's GRPCInferenceService (package ``inference``, KServe's
grpc_predict_v2.proto), served on the gRPC inference port beside TorchServe's service.

Health, readiness and metadata give what REST's /v2 routes give (daemon/models/oip.py); ModelInfer
hands the handler the same JSON request document as REST's /v2 infer (daemon/rpc/tensors.py)."""
from __future__ import annotations

import json
from typing import Any

import grpc

from daemon.core import Core
from daemon.errors import InternalServerError
from daemon.models.oip import EXTENSIONS, SERVER_NAME, model_metadata, model_ready
from daemon.rpc.generated import grpc_predict_v2_pb2 as pb
from daemon.rpc.generated import grpc_predict_v2_pb2_grpc as pb_grpc
from daemon.rpc.jobs import outcome, request_headers
from daemon.rpc.status import answer
from daemon.rpc.tensors import request_document, response_message
from protocol import messages

Context = grpc.aio.ServicerContext
TensorMetadata = pb.ModelMetadataResponse.TensorMetadata


class OipService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: Core) -> None:
        self.core = core
        self.predictions = core.predictions

    async def ServerLive(self, request: Any, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.core.health.ready())

    async def ServerMetadata(self, request: Any, context: Context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self.core.version,
                                         extensions=list(EXTENSIONS))

    async def ModelReady(self, request: pb.ModelReadyRequest,
                         context: Context) -> pb.ModelReadyResponse:
        mv = await answer(context, self._version(request.name, request.version))
        return pb.ModelReadyResponse(ready=model_ready(self.core.supervisor, mv))

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            context: Context) -> pb.ModelMetadataResponse:
        mv = await answer(context, self._version(request.name, request.version))
        doc = model_metadata(self.core.registry, mv)
        return pb.ModelMetadataResponse(
            name=doc["name"], versions=doc["versions"], platform=doc["platform"],
            inputs=[_tensor_metadata(t) for t in doc["inputs"]],
            outputs=[_tensor_metadata(t) for t in doc["outputs"]])

    async def _version(self, name: str, version: str) -> Any:
        return self.core.registry.get(name, version or None)

    async def ModelInfer(self, request: pb.ModelInferRequest,
                         context: Context) -> pb.ModelInferResponse:
        return await answer(context, self._infer(request, context))

    async def _infer(self, request: pb.ModelInferRequest,
                     context: Context) -> pb.ModelInferResponse:
        body = json.dumps(request_document(request)).encode()
        call = self.predictions.start(request.model_name, request.model_version,
                                      request_headers(context),
                                      [messages.parameter("body", "application/json", body)])
        answered = await outcome(call)
        try:
            document = json.loads(answered)
        except ValueError:
            raise InternalServerError("The handler's answer is not JSON") from None
        return response_message(document)


def _tensor_metadata(tensor: dict[str, Any]) -> TensorMetadata:
    shape = tensor.get("shape")
    if not isinstance(shape, list):
        shape = []
    return TensorMetadata(name=str(tensor.get("name", "")),
                          datatype=str(tensor.get("datatype", "")),
                          shape=[int(d) for d in shape if isinstance(d, int)])
