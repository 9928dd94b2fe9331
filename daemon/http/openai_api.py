"""OpenAI's API on the inference port: ``POST /v1/completions``, ``POST /v1/chat/completions``
and ``GET /v1/models``.

The daemon reads one thing of a completion request: its ``model``, a torchd model's name
(``name/version`` names a version). From there the request is exactly
``POST /predictions/{model}/v1/completions``: the handler sees ``url_path`` ``v1/completions``
(or ``v1/chat/completions``), the JSON body as one ``body`` parameter, and does the rest (the
sampling parameters, ``stream`` as server-sent events, ``usage``); its parts stream to the
client unchanged. What differs is the error document: every error on these routes, the
daemon's (unknown model, no worker, queue full, timeout) or the handler's
(``PredictionException``), is OpenAI's, since that is what OpenAI clients parse:
``{"error": {"message", "type", "param", "code"}}``, ``type`` ``invalid_request_error`` for a
4xx and ``server_error`` for a 5xx, ``code`` ``model_not_found`` for an unknown model and null
otherwise, as OpenAI's API answers.
"""
from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from daemon.errors import ModelNotFound, ModelVersionNotFound, TorchdError
from daemon.http.predict import NO_EXPLAIN, URL_PATH, PredictionEndpoint, Predictor, Target
from daemon.models.registry import Registry

COMPLETION_PATHS = ("/v1/completions", "/v1/chat/completions")
JSON_TYPE = "application/json"
OWNER = "torchd"   # the models' ``owned_by``

# OpenAI's own error types: a client's error, or the server's. (vLLM names them after the
# openai client's exceptions, BadRequestError and so on; text_generation answers a bad
# parameter with OpenAI's own, and one route must not speak two dialects.)
CLIENT_ERROR = "invalid_request_error"
SERVER_ERROR = "server_error"
MODEL_NOT_FOUND = "model_not_found"   # OpenAI's ``code`` for a model it does not serve


class OpenAIRequestError(TorchdError):
    """A request OpenAI's API refuses: ``param`` names the request field at fault, ``code``
    is OpenAI's code for the error (most have none)."""

    def __init__(self, message: str, status: int = 400, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message, status)
        self.param = param
        self.code = code


def error_type(status: int) -> str:
    return CLIENT_ERROR if status < 500 else SERVER_ERROR


def openai_error_document(exc: TorchdError) -> dict[str, Any]:
    return {"error": {"message": exc.message, "type": error_type(exc.status),
                      "param": getattr(exc, "param", None), "code": getattr(exc, "code", None)}}


def openai_error(exc: TorchdError) -> Response:
    """OpenAI's error document for ``exc``, with its status and headers (Retry-After)."""
    return JSONResponse(openai_error_document(exc), status_code=exc.status, headers=exc.headers)


# ---- a completion request → its model version -----------------------------------------------

def requested_model(body: bytes) -> str:
    """The ``model`` a completion request names; OpenAIRequestError (400) when the body is
    not a JSON object naming one."""
    try:
        request = json.loads(body)
    except ValueError as exc:   # UnicodeDecodeError is one
        raise OpenAIRequestError(f"The request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise OpenAIRequestError("The request body is not valid JSON: nested too deeply."
                                 ) from None
    if not isinstance(request, dict):
        raise OpenAIRequestError("The request body must be a JSON object.")
    model = request.get("model")
    if model is None:
        raise OpenAIRequestError("The request must name its model: `model` is missing.",
                                 param="model")
    if not isinstance(model, str) or not model:
        raise OpenAIRequestError("`model` must be a model's name (a non-empty string).",
                                 param="model")
    return model


def model_version(model: str) -> tuple[str, str | None]:
    """``name`` or ``name/version`` (a model's name never holds a "/")."""
    name, slash, version = model.partition("/")
    if slash and name and version:
        return name, version
    return model, None


def resolve_model(registry: Registry, model: str) -> tuple[str, str | None]:
    """The registered model version ``model`` names; 404 in OpenAI's words when none."""
    name, version = model_version(model)
    try:
        registry.get(name, version)
    except (ModelNotFound, ModelVersionNotFound):
        raise OpenAIRequestError(f"The model `{model}` does not exist.", 404, param="model",
                                 code=MODEL_NOT_FOUND) from None
    return name, version


class OpenAIEndpoint(PredictionEndpoint):
    """``POST /v1/completions`` and ``/v1/chat/completions``: the model named in the body,
    the handler seeing the path as its ``url_path``, errors as OpenAI's.

    The body always reaches the handler as JSON (decoded in the worker), whatever the request's
    content type says: curl's ``-d`` sends form-urlencoded, OpenAI clients send JSON."""

    render_error = staticmethod(openai_error)
    body_type = JSON_TYPE

    def __init__(self, predictor: Predictor, url_path: str) -> None:
        super().__init__(predictor, ((URL_PATH, url_path), *NO_EXPLAIN))

    def target(self, scope: dict[str, Any]) -> Target:
        return "", None, self.extra_headers   # the model is known once the body is in

    def resolve(self, target: Target, body: bytes, params: list[dict] | None = None
                ) -> Target:
        model = requested_model(body)
        name, version = resolve_model(self.predictor.predictions.registry, model)
        return name, version, target[2]


def openai_prediction_routes(predictor: Predictor) -> list[Route]:
    return [Route(path, OpenAIEndpoint(predictor, path.lstrip("/")), methods=["POST"])
            for path in COMPLETION_PATHS]


# ---- GET /v1/models --------------------------------------------------------------------------

def model_list(registry: Registry) -> dict[str, Any]:
    """Every model (its default version), as OpenAI's list and as KServe v1's: both APIs
    list models at ``GET /v1/models``, OpenAI's clients read ``data``, KServe's ``models``.
    A workflow's function nodes are left out, as GET /models leaves them out."""
    defaults = [mv for mv in registry.defaults() if mv.listed]
    return {
        "object": "list",
        "data": [{"id": mv.name, "object": "model", "created": int(mv.registered_at),
                  "owned_by": OWNER} for mv in defaults],
        "models": [mv.name for mv in defaults],
    }
