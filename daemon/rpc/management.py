"""TorchServe's ManagementAPIsService: each rpc calls the model manager as the REST route does
and answers as TorchServe 0.12's gRPC front end: ``ManagementResponse.msg`` is the REST status
sentence itself for register, scale, set-default and unregister, and JSON written out with a
two-space indent for describe and list; an error's details are the REST message, a newline and
TorchServe's Java exception class (``Model not found: m\norg.pytorch...ModelNotFoundException``).

proto3 cannot tell an unset number from 0, nor an unset string from "": as TorchServe's gRPC
front end does, 0 and "" mean "not given" (the REST defaults apply). Two deliberate fixes: a
conflict (a version registered twice) answers ABORTED with its message where TorchServe lets
the exception escape (UNKNOWN, no details), and ListModels without a ``limit`` lists up to 100
models where TorchServe lists none."""
from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

import grpc

from daemon.control.manager import ModelManager, Outcome
from daemon.errors import BadRequest, MethodNotAllowed, TorchdError
from daemon.jsonlayout import document_text
from daemon.models.requests import RegisterRequest
from daemon.rpc.generated import management_pb2 as pb
from daemon.rpc.generated import management_pb2_grpc as pb_grpc
from daemon.rpc.status import answer, details

Context = grpc.aio.ServicerContext
T = TypeVar("T")


def given(value: T) -> T | None:
    """None for proto3's "not set" (0, "")."""
    return value or None


# The Java packages of TorchServe's exceptions; the rest live in org.pytorch.serve.http.
JAVA_PACKAGES = {"ModelNotFoundException": "org.pytorch.serve.archive.model",
                 "ModelVersionNotFoundException": "org.pytorch.serve.archive.model",
                 "InvalidModelException": "org.pytorch.serve.archive.model",
                 "InvalidKeyException": "org.pytorch.serve.archive.model",
                 "ModelException": "org.pytorch.serve.archive.model",
                 "DownloadArchiveException": "org.pytorch.serve.archive"}
# TorchServe's words, and exception, when the model API is off (torchd's REST says more)
MODEL_API_DISABLED = "Model API disabled"


def java_exception(type_name: str) -> str:
    return f"{JAVA_PACKAGES.get(type_name, 'org.pytorch.serve.http')}.{type_name}"


class ModelApiDisabled(MethodNotAllowed):
    type = "ModelException"


def java_details(error: TorchdError) -> str:
    """TorchServe's details: the message, then the exception's Java class on a line of its own."""
    return f"{details(error.message)}\n{java_exception(error.type)}"


async def managed(context: Context, call: Awaitable[T]) -> T:
    return await answer(context, call, java_details)


def _status(outcome: Outcome) -> pb.ManagementResponse:
    return pb.ManagementResponse(msg=outcome.message)


def _document(body: Any) -> pb.ManagementResponse:
    return pb.ManagementResponse(msg=document_text(body))


class ManagementService(pb_grpc.ManagementAPIsServiceServicer):
    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    async def DescribeModel(self, request: pb.DescribeModelRequest,
                            context: Context) -> pb.ManagementResponse:
        described = await managed(context, self.manager.describe_customized(
            request.model_name, given(request.model_version), request.customized))
        return _document(described)

    async def ListModels(self, request: pb.ListModelsRequest,
                         context: Context) -> pb.ManagementResponse:
        body = self.manager.list_models(request.limit or 100, request.next_page_token)
        return _document(body)

    async def RegisterModel(self, request: pb.RegisterModelRequest,
                            context: Context) -> pb.ManagementResponse:
        return _status(await managed(context, self._register(request)))

    async def _register(self, r: pb.RegisterModelRequest) -> Outcome:
        self._require_model_api()
        return await self.manager.register(RegisterRequest(
            url=given(r.url), model_name=given(r.model_name), handler=given(r.handler),
            runtime=given(r.runtime), batch_size=given(r.batch_size),
            max_batch_delay=given(r.max_batch_delay), initial_workers=given(r.initial_workers),
            synchronous=r.synchronous, response_timeout=given(r.response_timeout),
            startup_timeout=given(r.startup_timeout), s3_sse_kms=r.s3_sse_kms))

    async def ScaleWorker(self, request: pb.ScaleWorkerRequest,
                          context: Context) -> pb.ManagementResponse:
        r = request
        return _status(await managed(context, self.manager.scale(
            r.model_name, given(r.model_version), given(r.min_worker), given(r.max_worker),
            r.synchronous, r.timeout or -1)))

    async def SetDefault(self, request: pb.SetDefaultRequest,
                         context: Context) -> pb.ManagementResponse:
        return _status(await managed(context, self.manager.set_default(
            request.model_name, request.model_version)))

    async def UnregisterModel(self, request: pb.UnregisterModelRequest,
                              context: Context) -> pb.ManagementResponse:
        return _status(await managed(context, self._unregister(request)))

    async def _unregister(self, r: pb.UnregisterModelRequest) -> Outcome:
        self._require_model_api()
        if not r.model_name:
            # TorchServe's check, in its words (it names the url even here)
            raise BadRequest("Parameter url is required.")
        return await self.manager.unregister(r.model_name, given(r.model_version))

    def _require_model_api(self) -> None:
        try:
            self.manager.require_model_api()
        except MethodNotAllowed as exc:
            raise ModelApiDisabled(MODEL_API_DISABLED) from exc
