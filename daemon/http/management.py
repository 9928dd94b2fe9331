"""Management API routes (port 8081): parse, call the ModelManager, render."""
from __future__ import annotations

import json
import logging
from typing import Any, overload

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from daemon.errors import BadRequest
from daemon.http.common import (DESCRIPTION_ROUTES, JSONAnswer, Params, model_api_description,
                                read_body, status_json)
from daemon.models.layers import JAVA_INT
from daemon.control.manager import ModelManager, Outcome
from daemon.models.requests import RegisterRequest

logger = logging.getLogger(__name__)


@overload
def int_param(p: Params, name: str, default: int) -> int: ...
@overload
def int_param(p: Params, name: str, default: None = None) -> int | None: ...
def int_param(p: Params, name: str, default: int | None = None) -> int | None:
    """TorchServe parses integer parameters as Java ints: a value out of that range is as
    malformed as "abc" and means the default (beyond it, no worker could take it either)."""
    try:
        value = p.int(name, default)
    except OverflowError:       # a JSON body's Infinity
        value = JAVA_INT.stop
    if value is not None and value not in JAVA_INT:
        logger.warning("parameter %s=%r is out of range; using %r", name,
                       p.values.get(name), default)
        return default
    return value


def manager(request: Request) -> ModelManager:
    return request.app.state.manager


def require_model_api(request: Request) -> None:
    manager(request).require_model_api()


def outcome_response(outcome: Outcome) -> Response:
    return status_json(outcome.message, outcome.status)


async def json_body(request: Request) -> dict[str, Any] | None:
    """The parameters of a JSON body (Content-Type: application/json), as TorchServe reads
    them (register calls of models and workflows); None for any other body."""
    if not request.headers.get("content-type", "").lower().startswith("application/json"):
        return None
    raw = await read_body(request, request.app.state.config.max_request_size)
    if not raw.strip():
        return None
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"Invalid JSON body: {exc}") from exc
    except RecursionError:
        raise BadRequest("Invalid JSON body: nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest("The JSON body must be an object")
    return body


async def register(request: Request) -> Response:
    require_model_api(request)
    p = Params.from_query(request, await json_body(request))
    req = RegisterRequest(
        url=p.str("url"), model_name=p.str("model_name") or None, handler=p.str("handler") or None,
        runtime=p.str("runtime"), batch_size=int_param(p, "batch_size"),
        max_batch_delay=int_param(p, "max_batch_delay"),
        initial_workers=int_param(p, "initial_workers"), synchronous=p.bool("synchronous", True),
        response_timeout=int_param(p, "response_timeout"),
        startup_timeout=int_param(p, "startup_timeout"), s3_sse_kms=p.bool("s3_sse_kms", False))
    return outcome_response(await manager(request).register(req))


async def list_models(request: Request) -> Response:
    p = Params.from_query(request)
    body = manager(request).list_models(int_param(p, "limit", 100),
                                        int_param(p, "next_page_token", 0))
    return JSONAnswer(body)


def _name_version(request: Request) -> tuple[str, str | None]:
    return request.path_params["model_name"], request.path_params.get("model_version")


async def describe(request: Request) -> Response:
    name, version = _name_version(request)
    customized = Params.from_query(request).bool("customized", False)
    return JSONAnswer(await manager(request).describe_customized(name, version, customized))


async def scale(request: Request) -> Response:
    name, version = _name_version(request)
    p = Params.from_query(request)
    outcome = await manager(request).scale(
        name, version, int_param(p, "min_worker", 1), int_param(p, "max_worker"),
        p.bool("synchronous", False), int_param(p, "timeout", -1))
    return outcome_response(outcome)


async def unregister(request: Request) -> Response:
    require_model_api(request)
    name, version = _name_version(request)
    return outcome_response(await manager(request).unregister(name, version))


async def set_default(request: Request) -> Response:
    p = request.path_params   # its one route names both
    return outcome_response(await manager(request).set_default(p["model_name"],
                                                               p["model_version"]))


ROUTES = [
    *DESCRIPTION_ROUTES,
    Route("/models", list_models, methods=["GET"]),
    Route("/models", register, methods=["POST"]),
    Route("/models/{model_name}", describe, methods=["GET"]),
    Route("/models/{model_name}", scale, methods=["PUT"]),
    Route("/models/{model_name}", unregister, methods=["DELETE"]),
    Route("/models/{model_name}/{model_version}", describe, methods=["GET"]),
    Route("/models/{model_name}/{model_version}", scale, methods=["PUT"]),
    Route("/models/{model_name}/{model_version}", unregister, methods=["DELETE"]),
    Route("/models/{model_name}/{model_version}/set-default", set_default, methods=["PUT"]),
    Route("/models/{model_name}", model_api_description, methods=["OPTIONS"]),
    Route("/models/{model_name}/{model_version}", model_api_description, methods=["OPTIONS"]),
]
