"""The two gRPC listeners: grpcio's asyncio servers in the daemon's event loop.

Inference (default 127.0.0.1:7070): TorchServe's InferenceAPIsService and OIP's
GRPCInferenceService. Management (127.0.0.1:7071): TorchServe's ManagementAPIsService. Both:
grpc.health.v1.Health (daemon/rpc/health.py) and server reflection (grpcio-reflection's
v1alpha, which grpcurl reads). The ports
are bound before any model loads (a busy port fails the start, as REST's do) and serve once the
daemon is ready; at shutdown they stop accepting and in-flight calls get a grace period.
``max_request_size`` bounds a received message (RESOURCE_EXHAUSTED above it); token auth reads
``authorization: Bearer <key>`` metadata under REST's rules.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_reflection.v1alpha import reflection

from daemon.config.settings import Config
from daemon.config.values import BindAddress
from daemon.errors import TorchdError
from daemon.osutil import connections_allowed
from daemon.rpc.generated import grpc_predict_v2_pb2, inference_pb2, management_pb2
from daemon.rpc.handlers import register_servicer
from daemon.rpc.health import HEALTH_METHODS, HEALTH_SERVICE, INFERENCE_SERVICES, \
    MANAGEMENT_SERVICE, DaemonHealth
from daemon.rpc.inference import InferenceService
from daemon.rpc.management import ManagementService
from daemon.rpc.oip import OipService
from daemon.rpc.status import details, grpc_code

if TYPE_CHECKING:
    from daemon.core import Core
    from daemon.control.tokens import TokenStore

    Handler = grpc.RpcMethodHandler[Any, Any]   # generic in typeshed's stubs only

logger = logging.getLogger(__name__)
KINDS = ("inference", "management")
SERVICES = {"inference": INFERENCE_SERVICES, "management": (MANAGEMENT_SERVICE,)}


class BindError(Exception):
    """A gRPC listener cannot bind its address; the message names which and where."""


class TokenGate(grpc.aio.ServerInterceptor):
    """Token auth for one listener: the call's ``authorization`` metadata must hold the key of
    ``kind`` (REST's rule, daemon/control/tokens.py); otherwise UNAUTHENTICATED."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.tokens: TokenStore | None = None   # the daemon's, once it exists

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
            details: grpc.HandlerCallDetails) -> Handler | None:
        handler = await continuation(details)
        if handler is None or self.tokens is None or details.method.startswith(HEALTH_METHODS):
            return handler   # a health probe cannot send a key (daemon/rpc/health.py)
        values = [v.encode() if isinstance(v, str) else v
                  for k, v in details.invocation_metadata or () if k == "authorization"]
        denied = self.tokens.check_values(self.kind, values)
        return handler if denied is None else _denying(handler, denied)


def _denying(handler: Handler, error: TorchdError) -> Handler:
    """A handler of the same shape as ``handler`` that only refuses the call."""
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc_code(error.status), details(error.message))

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc_code(error.status), details(error.message))
        yield   # an async generator, as a streaming rpc's handler must be

    codec = {"request_deserializer": handler.request_deserializer,
             "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse, **codec)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, **codec)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse, **codec)
    return grpc.stream_stream_rpc_method_handler(refuse_stream, **codec)


def grpc_target(address: BindAddress) -> str:
    return address.bind   # host:port, [v6]:port or unix:/path: what grpc takes too


class RpcListeners:
    """Both gRPC servers: ``bind`` early, ``serve`` once the core is ready, ``stop`` at the
    end (idempotent)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.gates = {kind: TokenGate(kind) for kind in KINDS}
        self.servers: dict[str, grpc.aio.Server] = {}
        self.ports: dict[str, int] = {}
        self._stopping: asyncio.Future | None = None
        self._health: asyncio.Task | None = None   # keeps grpc.health.v1's statuses current

    def bind(self) -> None:
        """Raises BindError; servers already made are then stopped by ``stop``."""
        for kind, address in self.config.grpc_listeners.items():
            interceptors = [self.gates[kind]] if self.config.token_auth_enabled else []
            server = grpc.aio.server(interceptors=interceptors, options=self._options())
            self.servers[kind] = server
            self.ports[kind] = self._add_port(server, kind, address)

    def _options(self) -> list[tuple[str, Any]]:
        config = self.config
        listeners = len(config.listeners) + len(config.grpc_listeners)
        # SO_REUSEPORT (grpc's default) would let a second daemon bind the same port silently.
        # grpc's core closes a connection past the cap at once (there is no HTTP answer to
        # give), and one that has not finished its TLS and HTTP/2 handshake in the head's time.
        return [("grpc.max_receive_message_length", config.max_request_size),
                ("grpc.so_reuseport", 0),
                ("grpc.max_allowed_incoming_connections",
                 connections_allowed(config.max_connections, listeners)),
                ("grpc.server_handshake_timeout_ms",
                 int(config.request_header_timeout * 1000))]

    def _add_port(self, server: grpc.aio.Server, kind: str, address: BindAddress) -> int:
        target = grpc_target(address)
        try:
            if address.is_tls:
                return server.add_secure_port(target, self._credentials())
            return server.add_insecure_port(target)
        except (RuntimeError, OSError) as exc:
            raise BindError(f"gRPC {kind} API cannot listen on {target}: {exc}") from None

    def _credentials(self) -> grpc.ServerCredentials:
        key_file, certificate_file = self.config.private_key_file, self.config.certificate_file
        if key_file is None or certificate_file is None:   # load_config refuses that already
            raise BindError("gRPC over TLS needs private_key_file and certificate_file")
        return grpc.ssl_server_credentials([(key_file.read_bytes(),
                                             certificate_file.read_bytes())])

    async def serve(self, core: Core) -> None:
        for gate in self.gates.values():
            gate.tokens = core.tokens
        inference, management = self.servers["inference"], self.servers["management"]
        register_servicer(inference, _service(inference_pb2, "InferenceAPIsService"),
                          InferenceService(core), "grpc-inference")
        register_servicer(inference, _service(grpc_predict_v2_pb2, "GRPCInferenceService"),
                          OipService(core), "grpc-inference")
        register_servicer(management, _service(management_pb2, "ManagementAPIsService"),
                          ManagementService(core.manager), "grpc-management")
        health = DaemonHealth(core.health.ready)
        for kind, server in self.servers.items():
            health.add_to(server)
            # grpcurl and other tools list and call the services without the .proto files
            reflection.enable_server_reflection(
                (*SERVICES[kind], HEALTH_SERVICE, reflection.SERVICE_NAME), server)
        self._health = asyncio.ensure_future(health.keep_current())
        for kind, server in self.servers.items():
            await server.start()
            address = self.config.grpc_listeners[kind]
            logger.info("gRPC %s API listening on %s", kind, grpc_target(address))

    async def stop(self, grace: float) -> None:
        """Refuse new calls; in-flight calls get ``grace`` seconds, then are cancelled."""
        if self._health is not None:
            self._health.cancel()
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(asyncio.gather(
                *(server.stop(grace) for server in self.servers.values())))
        await self._stopping


def _service(module: ModuleType, name: str) -> ServiceDescriptor:
    return module.DESCRIPTOR.services_by_name[name]
