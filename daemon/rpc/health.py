"""gRPC's standard health service, ``grpc.health.v1.Health`` (grpcio-health-checking), on both
gRPC listeners: what Kubernetes' ``grpc`` probes, grpc_health_probe and service meshes ask.

TorchServe has none (its gRPC health is the ``Ping`` rpc). The service names answer as REST's
probes do:

- ``""`` and ``readiness``: SERVING when the daemon is ready (``/v2/health/ready``: every model's
  default version that asks for workers has them READY, and the daemon is not draining), else
  NOT_SERVING;
- ``liveness``: SERVING while the daemon serves (``/v2/health/live``; a failed model is no
  reason to restart the process);
- each gRPC service's full name: the inference ones as readiness, management SERVING.

Any other name is NOT_FOUND. ``Check`` reads the daemon's state at the call; ``Watch`` streams
see a change within ``REFRESH_S``. Token auth does not apply (a probe cannot send a key), as
REST's probes need none.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

logger = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
HEALTH_SERVICE = "grpc.health.v1.Health"
HEALTH_METHODS = f"/{HEALTH_SERVICE}/"   # the prefix of its rpcs' paths
REFRESH_S = 1.0
INFERENCE_SERVICES = ("org.pytorch.serve.grpc.inference.InferenceAPIsService",
                      "inference.GRPCInferenceService")
MANAGEMENT_SERVICE = "org.pytorch.serve.grpc.management.ManagementAPIsService"


def statuses(ready: bool) -> dict[str, int]:
    """Every service name's status, the daemon being ``ready`` or not."""
    readiness = SERVING if ready else NOT_SERVING
    return {"": readiness, "readiness": readiness, "liveness": SERVING,
            **{name: readiness for name in INFERENCE_SERVICES}, MANAGEMENT_SERVICE: SERVING}


class DaemonHealth(health.aio.HealthServicer):
    """The library's servicer, its statuses kept to the daemon's: refreshed at each Check and
    every REFRESH_S for watchers (set only on a change, so a watcher wakes only for one)."""

    def __init__(self, ready: Callable[[], bool]) -> None:
        super().__init__()
        self._ready = ready
        self._shown: dict[str, int] = {}

    async def refresh(self) -> None:
        for name, status in statuses(self._ready()).items():
            if self._shown.get(name) != status:
                self._shown[name] = status
                await self.set(name, status)

    async def Check(self, request: health_pb2.HealthCheckRequest,  # noqa: N802 (grpc's name)
                    context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        await self.refresh()
        return await super().Check(request, context)

    async def keep_current(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:   # the watchers keep the last statuses; Check refreshes anew
                logger.exception("refreshing the gRPC health statuses failed")
            await asyncio.sleep(REFRESH_S)

    def add_to(self, server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self, server)
