"""A servicer's methods as grpc method handlers, from the service's descriptor.

What the generated ``add_*Servicer_to_server`` functions do, plus two things they cannot: a
request that is not a valid message of its type answers INVALID_ARGUMENT with a plain message
(grpcio's own answer is INTERNAL, "Exception deserializing request!", which reads as a server
fault and is not TorchServe's mapping of a bad request, 400); and every call writes one access
log line, as every HTTP request does.
"""
from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError

_MALFORMED = object()   # what the decoder hands the handler for bytes that do not parse
access_log = logging.getLogger("torchd.access")
ACCESS_FORMAT = '%s "RPC %s" %s %.1fms'


def register_servicer(server: grpc.aio.Server, service: ServiceDescriptor, servicer: Any,
                      listener: str) -> None:
    """Serve ``servicer``'s methods; ``listener`` names the port in the access log."""
    handlers = {method.name: _handler(method, getattr(servicer, method.name), listener)
                for method in service.methods}
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


def _handler(method: MethodDescriptor, behavior: Callable,
             listener: str) -> grpc.RpcMethodHandler:
    request_type = message_factory.GetMessageClass(method.input_type)
    response_type = message_factory.GetMessageClass(method.output_type)
    refusal = f"The request is not a valid {method.input_type.full_name} message"
    if method.client_streaming:   # only StreamPredictions2: streams both ways
        guarded = _stream_in_stream_out(behavior, refusal)
    elif method.server_streaming:
        guarded = _unary_in_stream_out(behavior, refusal)
    else:
        guarded = _unary_in(behavior, refusal)
    guarded = _logged(guarded, listener, method)   # a refused message is logged too
    make = {(False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler}
    return make[(method.client_streaming, method.server_streaming)](
        guarded, request_deserializer=_decoder(request_type),
        response_serializer=response_type.SerializeToString)


def _logged(behavior: Callable, listener: str, method: MethodDescriptor) -> Callable:
    """``behavior`` with one access line per call: listener, rpc, status code, duration."""
    path = f"/{method.containing_service.full_name}/{method.name}"

    def log(context: grpc.aio.ServicerContext, started: float) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        code = context.code() or grpc.StatusCode.OK
        name = code.name if isinstance(code, grpc.StatusCode) else str(code)
        # made and handled directly, as REST's lines are: Logger.info would walk the stack to
        # find a caller that a line per call never shows
        access_log.handle(access_log.makeRecord(
            access_log.name, logging.INFO, __file__, 0, ACCESS_FORMAT,
            (listener, path, name, (time.perf_counter() - started) * 1e3), None))

    if method.server_streaming:
        async def streamed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                async for response in behavior(request, context):
                    yield response
            finally:
                log(context, started)
        return streamed

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        try:
            return await behavior(request, context)
        finally:
            log(context, started)
    return unary


def _decoder(message_type: Any) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except DecodeError:
            return _MALFORMED
    return decode


async def _refuse(context: grpc.aio.ServicerContext, refusal: str) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refusal)


def _unary_in(behavior: Callable, refusal: str) -> Callable:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request is _MALFORMED:
            await _refuse(context, refusal)
        return await behavior(request, context)
    return guarded


def _unary_in_stream_out(behavior: Callable, refusal: str) -> Callable:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if request is _MALFORMED:
            await _refuse(context, refusal)
        async for response in behavior(request, context):
            yield response
    return guarded


def _stream_in_stream_out(behavior: Callable, refusal: str) -> Callable:
    async def guarded(requests: AsyncIterator[Any],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async def checked() -> AsyncIterator[Any]:
            async for request in requests:
                if request is _MALFORMED:
                    await _refuse(context, refusal)   # sends the status, then raises
                yield request
        async for response in behavior(checked(), context):
            yield response
    return guarded
