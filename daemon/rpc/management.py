"""TorchServe's ManagementAPIsService: each rpc calls the model manager as the REST route does
and answers the REST body as a JSON string in ``ManagementResponse.msg``.

proto3 cannot tell an unset number from 0, nor an unset string from "": as TorchServe's gRPC
front end does, 0 and "" mean "not given" (the REST defaults apply)."""
from __future__ import annotations

from typing import TypeVar

import grpc

from daemon.control.manager import ModelManager, Outcome
from daemon.models.requests import RegisterRequest
from daemon.rpc.generated import management_pb2 as pb
from daemon.rpc.generated import management_pb2_grpc as pb_grpc
from daemon.rpc.status import answer, json_text

Context = grpc.aio.ServicerContext
T = TypeVar("T")


def given(value: T) -> T | None:
    """None for proto3's "not set" (0, "")."""
    return value or None


def _status(outcome: Outcome) -> pb.ManagementResponse:
    return pb.ManagementResponse(msg=json_text({"status": outcome.message}))


class ManagementService(pb_grpc.ManagementAPIsServiceServicer):
    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    async def DescribeModel(self, request: pb.DescribeModelRequest,
                            context: Context) -> pb.ManagementResponse:
        described = await answer(context, self.manager.describe_customized(
            request.model_name, given(request.model_version), request.customized))
        return pb.ManagementResponse(msg=json_text(described))

    async def ListModels(self, request: pb.ListModelsRequest,
                         context: Context) -> pb.ManagementResponse:
        body = self.manager.list_models(request.limit or 100, request.next_page_token)
        return pb.ManagementResponse(msg=json_text(body))

    async def RegisterModel(self, request: pb.RegisterModelRequest,
                            context: Context) -> pb.ManagementResponse:
        return _status(await answer(context, self._register(request)))

    async def _register(self, r: pb.RegisterModelRequest) -> Outcome:
        self.manager.require_model_api()
        return await self.manager.register(RegisterRequest(
            url=given(r.url), model_name=given(r.model_name), handler=given(r.handler),
            runtime=given(r.runtime), batch_size=given(r.batch_size),
            max_batch_delay=given(r.max_batch_delay), initial_workers=given(r.initial_workers),
            synchronous=r.synchronous, response_timeout=given(r.response_timeout),
            startup_timeout=given(r.startup_timeout), s3_sse_kms=r.s3_sse_kms))

    async def ScaleWorker(self, request: pb.ScaleWorkerRequest,
                          context: Context) -> pb.ManagementResponse:
        r = request
        return _status(await answer(context, self.manager.scale(
            r.model_name, given(r.model_version), given(r.min_worker), given(r.max_worker),
            r.synchronous, r.timeout or -1)))

    async def SetDefault(self, request: pb.SetDefaultRequest,
                         context: Context) -> pb.ManagementResponse:
        return _status(await answer(context, self.manager.set_default(
            request.model_name, request.model_version)))

    async def UnregisterModel(self, request: pb.UnregisterModelRequest,
                              context: Context) -> pb.ManagementResponse:
        return _status(await answer(context, self._unregister(request)))

    async def _unregister(self, r: pb.UnregisterModelRequest) -> Outcome:
        self.manager.require_model_api()
        return await self.manager.unregister(r.model_name, given(r.model_version))
