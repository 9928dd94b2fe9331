"""What every listener shares: lenient parameters, request ids, errors, access log, body limits."""
from __future__ import annotations

import builtins
import functools
import logging
import time
from collections.abc import Awaitable
from typing import Any, Callable, Protocol

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from daemon.errors import (BadRequest, MethodNotAllowed, PayloadTooLarge, ResourceNotFound,
                           TorchdError)
from daemon.http.openapi import model_document
from daemon.jsonlayout import document_bytes, error_bytes
from daemon.logformat import DIRECT_LINES
from daemon.models.call import new_request_id

logger = logging.getLogger(__name__)
access_log = logging.getLogger("torchd.access")
# Scope key of a list the inference listener puts in every request's scope: it calls each
# callable there when the client hangs up before the response is complete.
DISCONNECT_HOOKS = "torchd.disconnect_hooks"


class DirectPathLike(Protocol):
    """The direct path (daemon/http/direct.py) as the listener sees it: it is offered each
    request's exchange (daemon/http/uvicorn_adapter.py) and says whether it serves it."""

    def take(self, exchange: Any) -> bool: ...


class Params:
    """Query string (or JSON body) parameters with TorchServe's lenient typing: a malformed
    integer or boolean falls back to its default, with a warning."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    @classmethod
    def from_query(cls, request: Request, body: dict[str, Any] | None = None) -> Params:
        values: dict[str, Any] = dict(request.query_params)
        if body:
            values.update(body)
        return cls(values)

    # The methods are named after the types they read: inside the class body, ``str`` is the
    # method, so the annotations after it name the builtin.
    def str(self, name: str, default: str | None = None) -> str | None:
        value = self.values.get(name)
        return default if value is None else str(value)

    def int(self, name: builtins.str, default: int | None = None) -> int | None:
        value = self.values.get(name)
        if value is None or value == "":
            return default
        if isinstance(value, bool):
            return default
        try:
            return int(value)
        except (TypeError, ValueError):
            logger.warning("parameter %s=%r is not an integer; using %r", name, value, default)
            return default

    def bool(self, name: builtins.str, default: bool) -> bool:
        value = self.values.get(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        return str(value).lower() == "true"


class ApiDescriptions:
    """A port's OpenAPI document (SPEC 1.8) in TorchServe's layout, and each model's part of
    it. Laying out 200 kB takes ~7 ms of the event loop, so the whole is laid out once and a
    model's part once per (model, versions, default version), not per OPTIONS request."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.body = document_bytes(document)
        self.model_body = functools.lru_cache(maxsize=64)(self._model_body)

    def _model_body(self, name: str, versions: tuple[str, ...], default: str) -> bytes:
        return document_bytes(model_document(self.document, name, list(versions), default))


async def api_description(request: Request) -> Response:
    return Response(request.app.state.api_descriptions.body, media_type="application/json")


async def model_api_description(request: Request) -> Response:
    """TorchServe's OPTIONS on a model's paths: the model's part of this port's document. An
    unknown model, or version where the path names one, is the usual 404."""
    p = request.path_params
    registry = request.app.state.registry
    registry.get(p["model_name"], p.get("model_version"))
    model = registry.model(p["model_name"])
    body = request.app.state.api_descriptions.model_body(model.name, tuple(model.versions),
                                                         model.default_version)
    return Response(body, media_type="application/json")


# Both API ports describe themselves (SPEC 1.8): their own OpenAPI document in app.state.
DESCRIPTION_ROUTES = [
    Route("/", api_description, methods=["OPTIONS"]),
    Route("/api-description", api_description, methods=["GET"]),
]


class JSONAnswer(JSONResponse):
    """A JSON document in TorchServe's layout (daemon/jsonlayout.py), as every TorchServe port
    answers one; starlette's own JSONResponse writes it on one line."""

    def render(self, content: Any) -> bytes:
        return document_bytes(content)


def error_response(exc: TorchdError) -> Response:
    """TorchServe's error document for ``exc``, with its status and headers."""
    return Response(error_bytes(exc.status, exc.type, exc.message), status_code=exc.status,
                    headers=exc.headers, media_type="application/json")


def status_json(message: str, status: int = 200) -> Response:
    return JSONAnswer({"status": message}, status_code=status)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing with 413 as soon as it exceeds ``limit`` bytes."""
    return await receive_body(request.scope, request.receive, limit)


def header(scope: Scope, name: bytes) -> str | None:
    """A request header straight from the ASGI scope (``name`` in lower case)."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"Request body exceeds max_request_size ({limit} bytes)")


def declared_too_large(scope: Scope, limit: int) -> bool:
    """The request's Content-Length is over ``limit``: refused before any of its body is read."""
    declared = header(scope, b"content-length")
    return bool(declared and declared.isdigit() and int(declared) > limit)


def normalized_path(path: str) -> str:
    """The path without its trailing slash: /predictions/m/ is /predictions/m."""
    if len(path) > 1 and path.endswith("/"):
        return path.rstrip("/") or "/"
    return path


async def receive_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """``read_body`` for plain ASGI code; ClientDisconnect if the client hangs up first."""
    if declared_too_large(scope, limit):
        raise too_large(limit)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def torchd_error(request: Request, exc: TorchdError) -> Response:
    return error_response(exc)


async def http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 405:
        return error_response(MethodNotAllowed(
            "Requested method is not allowed, please refer to API document."))
    if exc.status_code == 404:
        return error_response(ResourceNotFound(
            "Requested resource is not found, please refer to API document."))
    if exc.status_code == 400:      # starlette's own, e.g. a malformed multipart body
        return error_response(BadRequest(str(exc.detail)))
    return error_response(TorchdError(str(exc.detail), status=exc.status_code))


async def unexpected_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(TorchdError(f"{type(exc).__name__}: {exc}"))


class NoResponse(Response):
    """The client has hung up: there is nobody to answer. (499 is nginx's "client closed
    request", used only for metrics; nothing is sent.)"""

    status = 499

    def __init__(self) -> None:
        super().__init__(status_code=self.status)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        return None


async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
    return NoResponse()


# starlette calls each handler with an exception of its key's type (a TorchdError for
# torchd_error): the handlers' own parameter types are narrower than Exception
ExceptionHandlers = dict[type[Exception], Callable[[Request, Any], Awaitable[Response]]]
EXCEPTION_HANDLERS: ExceptionHandlers = {TorchdError: torchd_error, HTTPException: http_error,
                      ClientDisconnect: client_gone, Exception: unexpected_error}


class RequestContext:
    """Pure ASGI middleware: trailing slash, x-request-id, status counting, access log.

    Pure ASGI (not BaseHTTPMiddleware) because it sits on every request's hot path. On the
    inference port, ``direct`` (daemon/http/direct.py) serves prediction requests past it and
    every other layer of the ASGI app; the listener looks for it here.
    """

    direct: DirectPathLike | None = None

    def __init__(self, app: Callable, name: str, count_status: Callable[[int], None] | None,
                 authorize: Callable[[dict], TorchdError | None] | None = None) -> None:
        self.app = app
        self.name = name
        self.count_status = count_status
        self.authorize = authorize

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = normalized_path(scope["path"])
        if path != scope["path"]:
            scope = {**scope, "path": path}
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode())
        started = time.perf_counter()
        status_seen = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status_seen
            if message["type"] == "http.response.start":
                status_seen = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        denied = self.authorize(scope) if self.authorize else None
        try:
            if denied is not None:
                await error_response(denied)(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            self.finish(scope, status_seen, started, request_id)

    def finish(self, scope: dict, status: int, started: float, request_id: str) -> None:
        """A request is over: its status counted (0: nothing was sent) and its line logged."""
        if self.count_status is not None and status:
            self.count_status(status)
        if access_log.isEnabledFor(logging.INFO):
            log_access(self.name, scope, status, time.perf_counter() - started, request_id)


ACCESS_FORMAT = '%s "%s %s" %s %.1fms %s'


def log_access(listener: str, scope: dict, status: int, seconds: float, request_id: str) -> None:
    """One access log line: written straight to torchd's default log output where it goes
    nowhere else (DirectLines), else made and handled as a record (Logger.info would also walk
    the stack to find its caller, for a line per request that never shows it)."""
    args = (listener, scope["method"], scope["path"], status, seconds * 1e3, request_id)
    if DIRECT_LINES.write(access_log, ACCESS_FORMAT % args):
        return
    record = access_log.makeRecord(access_log.name, logging.INFO, __file__, 0, ACCESS_FORMAT,
                                   args, None)
    access_log.handle(record)
