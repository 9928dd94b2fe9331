"""The inference port's other front doors: SageMaker's, KServe v1's read side, OIP v2 explain,
and Multi Model Server's ``/{m}/predict``.

SageMaker's inference toolkit calls ``POST /invocations`` (one model per endpoint, or the model
named by a query parameter or header) and ``POST /models/{m}/invoke``; KServe v1 lists models
with ``GET /v1/models`` and asks ``GET /v1/models/{m}`` whether one is ready (which
TorchServe answers on the management port: torchd on both; the list is OpenAI's too, see
daemon/http/openai_api.py). The prediction routes are plain ASGI endpoints on the hot path
(see daemon/http/predict.py); the two GET routes are ordinary starlette routes.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from daemon.errors import BadRequest, MethodNotAllowed
from daemon.http.common import JSONAnswer, header
from daemon.http.openai_api import model_list
from daemon.http.predict import (EXPLAIN, PredictionEndpoint, Predictor, Target,
                                 V2InferEndpoint, any_method_route)

# SageMaker multi-model endpoints name the target in this header (the artifact's file name).
TARGET_MODEL_HEADER = b"x-amzn-sagemaker-target-model"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".mar")
KSERVE_VERBS = (":predict", ":explain")


class InvocationsEndpoint(PredictionEndpoint):
    """``POST /invocations``: the model named by ``?model_name=``, else by the SageMaker target
    header, else the only registered model, else by a ``model_name`` field of a form body (as
    TorchServe reads it); with several and no name, a 400 naming them."""

    def target(self, scope: dict[str, Any]) -> Target:
        return self.model_name(scope), None, ()   # "": the body's form may name it

    def model_name(self, scope: dict[str, Any]) -> str:
        named = _query_value(scope, "model_name")
        if named:
            return named
        names = self.predictor.predictions.registry.names()
        targeted = header(scope, TARGET_MODEL_HEADER)
        if targeted:
            return _target_model(targeted, names)
        if len(names) == 1:
            return names[0]
        return ""

    def resolve(self, target: Target, body: bytes, params: list[dict] | None = None
                ) -> Target:
        if target[0]:
            return target
        for param in params or ():
            if param["name"] == "model_name" and param["value"]:
                value = param["value"]
                return (value.decode("utf-8", "replace") if isinstance(value, bytes)
                        else str(value)), None, ()
        names = self.predictor.predictions.registry.names()
        if not names:
            raise BadRequest("Parameter model_name is required. No model is registered.")
        raise BadRequest(f"Parameter model_name is required: {len(names)} models are "
                         f"registered ({', '.join(names)}); name one with ?model_name=, the "
                         "X-Amzn-SageMaker-Target-Model header or a model_name form field.")


def _query_value(scope: dict[str, Any], name: str) -> str | None:
    raw = scope.get("query_string") or b""
    if not raw:
        return None
    values = parse_qs(raw.decode("latin-1")).get(name)
    return values[0] if values else None


def _target_model(value: str, names: list[str]) -> str:
    """The header names an artifact (``resnet.tar.gz``): the model of that name, with or
    without its archive suffix."""
    if value in names:
        return value
    for suffix in ARCHIVE_SUFFIXES:
        if value.endswith(suffix) and value[: -len(suffix)] in names:
            return value[: -len(suffix)]
    return value


class ModelInvokeEndpoint(PredictionEndpoint):
    """``POST /models/{model_name}/invoke``: the model's default version."""

    def target(self, scope: dict[str, Any]) -> Target:
        return scope["path_params"]["model_name"], None, ()


class V2ExplainEndpoint(V2InferEndpoint):
    """OIP v2 explain: infer's path and errors, with TorchServe's ``explain: True`` header."""


def compat_prediction_routes(predictor: Predictor) -> list[Route]:
    explain = V2ExplainEndpoint(predictor, EXPLAIN)
    return [
        Route("/invocations", InvocationsEndpoint(predictor), methods=["POST"]),
        Route("/models/{model_name}/invoke", ModelInvokeEndpoint(predictor), methods=["POST"]),
        Route("/v2/models/{model_name}/explain", explain, methods=["POST"]),
        Route("/v2/models/{model_name}/versions/{model_version}/explain", explain,
              methods=["POST"]),
    ]


def legacy_prediction_routes(predictor: Predictor) -> list[Route]:
    """``/{m}/predict`` and ``/{m}/{v}/predict``: Multi Model Server's prediction paths, which
    TorchServe still answers (undocumented) for clients of that era, with any method and
    without the ``url_path``/``explain`` headers of /predictions. Their first segment is a
    name, so they go after every other route (and are not on the hot path's lookup)."""
    legacy = PredictionEndpoint(predictor)
    return [any_method_route(path, legacy)
            for path in ("/{model_name}/predict", "/{model_name}/{model_version}/predict")]


# ---- KServe v1 model listing and readiness --------------------------------------------------

async def v1_models(request: Request) -> Response:
    """KServe v1's model names and OpenAI's model list, in one document (see model_list)."""
    return JSONResponse(model_list(request.app.state.registry))


async def v1_model_ready(request: Request) -> Response:
    name = request.path_params["model_name"]
    if name.endswith(KSERVE_VERBS):   # POST /v1/models/{m}:predict asked with GET
        raise MethodNotAllowed("Requested method is not allowed, please refer to API document.")
    mv = request.app.state.registry.get(name)
    ready = request.app.state.supervisor.ready(mv)
    return JSONAnswer({"name": mv.name, "ready": ready})


ROUTES = [
    Route("/v1/models", v1_models, methods=["GET"]),
    Route("/v1/models/{model_name}", v1_model_ready, methods=["GET"]),
]
# TorchServe answers the readiness on its management port (KServe's clients ask port 8080).
MANAGEMENT_ROUTES = [Route("/v1/models/{model_name}", v1_model_ready, methods=["GET"])]
