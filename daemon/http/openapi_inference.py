"""Paths and schemas of the inference port's OpenAPI document (SPEC 2); OpenAI's routes are
openapi_openai.py's."""
from __future__ import annotations

from typing import Any

from daemon.http import openapi_openai
from daemon.http.openapi_builders import (
    ANY,
    error,
    json_content,
    model_description,
    operation,
    path_param,
    query,
    ref,
    response,
    string,
)

MODEL_NAME = path_param("model_name", "The model's registered name.")
MODEL_VERSION = path_param("model_version", "A registered version of the model.")
URL_PATH = path_param("path", "The rest of the path, any number of segments (percent-decoded, "
                      "joined with `/`): the handler sees it as the request header `url_path` "
                      "(empty on the routes without it), e.g. `v1/chat/completions`.")
# TorchServe routes any method to /predictions and /explanations (daemon/http/predict.py).
TORCHSERVE_METHODS = ("post", "put", "get", "patch", "delete")

# The server hands any body to the handler: form fields one parameter each, anything else raw.
PREDICTION_BODY = {
    "required": False,
    "description": "The input for the handler. Form fields reach it one parameter each; any "
                   "other body reaches it as one parameter `body`.",
    "content": {
        "multipart/form-data": {"schema": {"type": "object"}},
        "application/x-www-form-urlencoded": {"schema": {"type": "object"}},
        "application/json": {"schema": ANY},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "*/*": {"schema": {"type": "string", "format": "binary"}},
    },
}

# What the handler returns, with the content type and status it set; streamed as chunks when it
# sends intermediate responses.
HANDLER_OUTPUT = {"description": "The handler's output.", "content": {"*/*": {"schema": ANY}}}


def _prediction_responses() -> dict[str, Any]:
    return {
        "200": HANDLER_OUTPUT,
        "404": error("Unknown model or version."),
        "413": error("The request body exceeds max_request_size."),
        "500": error("The worker died while handling the request."),
        "503": error("No worker, job queue full (with Retry-After), or the handler failed."),
        "504": error("The worker did not answer within the model's response_timeout "
                     "(RequestTimeoutException)."),
        "507": error("The handler ran out of memory."),
        "default": error("A status the handler chose (PredictionException)."),
    }


def _predict(operation_id: str, summary: str) -> dict[str, Any]:
    return operation(operation_id, summary, _prediction_responses(), body=PREDICTION_BODY)


def _torchserve_paths(verb: str, action: str) -> dict[str, Any]:
    """``/{verb}/{m}``, ``/{verb}/{m}/{v}`` and ``/{verb}/{m}/{v}/{path}``, each with every
    method TorchServe routes there, and OPTIONS (the model's endpoints); POST's operation ids
    are the historical ones (``predictions``, ``versionPredictions``), the others' say their
    method."""
    forms = (("", "", [MODEL_NAME], f"{action} with the model's default version."),
             ("/{model_version}", "version", [MODEL_NAME, MODEL_VERSION],
              f"{action} with one version."),
             ("/{model_version}/{path}", "urlPath", [MODEL_NAME, MODEL_VERSION, URL_PATH],
              f"{action} with one version; the handler sees the path after the version as "
              "its `url_path` header."))
    paths = {}
    for tail, prefix, params, summary in forms:
        base = prefix + verb.capitalize() if prefix else verb
        item = _any_method_item(params, base, summary)
        item["options"] = model_description(base + "ApiDescription")
        paths[f"/{verb}/{{model_name}}{tail}"] = item
    return paths


def _any_method_item(params: list, base: str, summary: str,
                     **extra: Any) -> dict[str, Any]:
    """A prediction path TorchServe answers with any method: POST's operation id is ``base``,
    the others' say their method; ``extra`` fields go on every operation."""
    item: dict[str, Any] = {"parameters": params}
    for method in TORCHSERVE_METHODS:
        if method == "post":
            item[method] = {**_predict(base, summary), **extra}
        else:
            item[method] = {**_predict(method + base[0].upper() + base[1:],
                                       f"{summary[:-1]} (as POST; the body may be empty)."),
                            **extra}
    return item


def _v2_error(description: str) -> dict[str, Any]:
    return response(description, ref("V2Error"))


def _v2_model_ready(operation_id: str) -> dict[str, Any]:
    # Not ready is a 4xx (SPEC 2): the model's state, not a server failure.
    return operation(operation_id, "Whether the model can serve requests.",
                     {"200": response("Ready.", ref("V2ModelReady")),
                      "400": _v2_error("Registered, but fewer workers READY than minWorkers "
                                       "(at least one)."),
                      "404": _v2_error("Unknown model or version.")})


def _ping(operation_id: str) -> dict[str, Any]:
    return operation(
        operation_id, "Health: every model's default version has its minimum of workers.",
        {"200": response("Healthy.", ref("Status")),
         "500": response("Unhealthy.", ref("Status"))})


def _v2_metadata(operation_id: str) -> dict[str, Any]:
    return operation(operation_id, "The model's name, versions, platform and tensors.",
                     {"200": response("Model metadata.", ref("V2ModelMetadata")),
                      "404": _v2_error("Unknown model or version.")})


def _invocations() -> dict[str, Any]:
    target = {"name": "X-Amzn-SageMaker-Target-Model", "in": "header", "required": False,
              "schema": string(), "description": "The model, by name or by its archive's file "
              "name (SageMaker multi-model endpoints); used when model_name is not given."}
    responses = {**_prediction_responses(),
                 "400": error("No model named while several (or none) are registered; the "
                              "message lists them.")}
    return operation("invocations", "SageMaker: predict with the named model's default version "
                     "(?model_name=, the header, else a model_name field of a form body), or "
                     "the only registered model's.", responses,
                     [query("model_name", string(), "The model to use."), target],
                     body=PREDICTION_BODY)


def v1_model_ready(operation_id: str) -> dict[str, Any]:
    """GET /v1/models/{model_name}, on both ports (TorchServe answers it on the management
    port; KServe's clients ask the inference port)."""
    return operation(operation_id, "KServe v1: whether the model's default version has "
                     "its minimum of workers (at least one) READY.",
                     {"200": response("The model's readiness.", ref("V1ModelReady")),
                      "404": error("Unknown model."),
                      "405": error("A :predict or :explain path asked with GET.")})


def _v2_infer(operation_id: str, summary: str = "Open Inference Protocol inference."
              ) -> dict[str, Any]:
    body = {"required": True, "content": json_content(ref("V2InferenceRequest"))}
    return operation(operation_id, summary,
                     {"200": response("The handler's answer (an inference response document "
                                      "when the handler returns one).", ANY),
                      "default": _v2_error("Any failure, as the v2 error document.")},
                     body=body)


def paths() -> dict[str, Any]:
    model, version = [MODEL_NAME], [MODEL_NAME, MODEL_VERSION]
    return {
        # POST /ping is accepted as TorchServe accepts it (SPEC 1.8).
        "/ping": {"get": _ping("ping"), "post": _ping("pingPost")},
        **_torchserve_paths("predictions", "Predict"),
        **_torchserve_paths("explanations", "Explain"),
        "/v1/models/{model_name}:predict": {"parameters": model, "post": _predict(
            "kserveV1Predict", "KServe v1 prediction with the model's default version.")},
        "/v1/models/{model_name}:explain": {"parameters": model, "post": _predict(
            "kserveV1Explain", "KServe v1 explanation with the model's default version.")},
        "/v2": {"get": operation("v2ServerMetadata", "Server name, version and extensions.",
                                 {"200": response("Server metadata.", ref("V2ServerMetadata"))})},
        "/v2/health/live": {"get": operation(
            "v2Live", "Liveness.", {"200": response("Live.", ref("V2Live"))})},
        "/v2/health/ready": {"get": operation(
            "v2Ready", "Readiness: every model's default version has its minimum of workers.",
            {"200": response("Ready.", ref("V2Ready")),
             "503": response("Not ready, or shutting down.", ref("V2Ready"))})},
        "/v2/models/{model_name}": {"parameters": model, "get": _v2_metadata("v2ModelMetadata")},
        "/v2/models/{model_name}/versions/{model_version}": {
            "parameters": version, "get": _v2_metadata("v2ModelVersionMetadata")},
        "/v2/models/{model_name}/ready": {"parameters": model,
                                          "get": _v2_model_ready("v2ModelReady")},
        "/v2/models/{model_name}/versions/{model_version}/ready": {
            "parameters": version, "get": _v2_model_ready("v2ModelVersionReady")},
        "/v2/models/{model_name}/infer": {"parameters": model, "post": _v2_infer("v2Infer")},
        "/v2/models/{model_name}/versions/{model_version}/infer": {
            "parameters": version, "post": _v2_infer("v2VersionInfer")},
        **_compat_paths(model, version),
        **openapi_openai.paths(),
    }


def _compat_paths(model: list, version: list) -> dict[str, Any]:
    """SageMaker's routes, KServe v1's listing and readiness, OIP v2 explain."""
    explain = "Open Inference Protocol explanation (the handler sees `explain: True`)."
    return {
        "/invocations": {"post": _invocations()},
        "/models/{model_name}/invoke": {"parameters": model, "post": _predict(
            "invokeModel", "SageMaker: predict with the model's default version.")},
        "/v1/models": {"get": openapi_openai.MODEL_LIST_OPERATION},
        "/v1/models/{model_name}": {"parameters": model,
                                    "get": v1_model_ready("kserveV1ModelReady")},
        "/v2/models/{model_name}/explain": {"parameters": model,
                                            "post": _v2_infer("v2Explain", explain)},
        "/v2/models/{model_name}/versions/{model_version}/explain": {
            "parameters": version, "post": _v2_infer("v2VersionExplain", explain)},
        **_legacy_paths(model, version),
    }


def _legacy_paths(model: list, version: list) -> dict[str, Any]:
    """Multi Model Server's ``/{m}/predict`` forms, any method, marked deprecated."""
    return {
        "/{model_name}/predict": _any_method_item(
            model, "legacyPredict",
            "Multi Model Server's form of a prediction with the default version.",
            deprecated=True),
        "/{model_name}/{model_version}/predict": _any_method_item(
            version, "legacyVersionPredict",
            "Multi Model Server's form of a prediction with one version.", deprecated=True),
    }


def _obj(required: list[str], **properties: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:  # OpenAPI 3.0 forbids an empty required list
        schema["required"] = required
    return schema


_STR, _BOOL = {"type": "string"}, {"type": "boolean"}
_SHAPE = {"type": "array", "items": {"type": "integer"}}
# Tensors are passed through from the model's config as declared, so no field is guaranteed.
_TENSOR_METADATA = _obj([], name=_STR, datatype=_STR, shape=_SHAPE)

SCHEMAS: dict[str, Any] = {
    "V1ModelReady": _obj(["name", "ready"], name=_STR, ready=_BOOL),
    "V2Error": _obj(["error"], error=_STR),
    "V2ServerMetadata": _obj(["name", "version", "extensions"], name=_STR, version=_STR,
                             extensions={"type": "array", "items": _STR}),
    "V2Live": _obj(["live"], live=_BOOL),
    "V2Ready": _obj(["ready"], ready=_BOOL),
    "V2ModelReady": _obj(["name", "ready"], name=_STR, ready=_BOOL),
    "V2TensorMetadata": _TENSOR_METADATA,
    "V2ModelMetadata": _obj(
        ["name", "versions", "platform", "inputs", "outputs"], name=_STR,
        versions={"type": "array", "items": _STR}, platform=_STR,
        inputs={"type": "array", "items": ref("V2TensorMetadata")},
        outputs={"type": "array", "items": ref("V2TensorMetadata")}),
    "V2InferenceRequest": _obj(
        ["inputs"], id=_STR, parameters={"type": "object"},
        inputs={"type": "array", "items": _obj(
            ["name", "shape", "datatype", "data"], name=_STR, shape=_SHAPE, datatype=_STR,
            parameters={"type": "object"}, data=ANY)},
        outputs={"type": "array", "items": _obj(["name"], name=_STR,
                                                parameters={"type": "object"})}),
    **openapi_openai.SCHEMAS,
}
