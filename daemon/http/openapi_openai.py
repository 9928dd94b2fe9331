"""Paths and schemas of OpenAI's API in the inference port's OpenAPI document
(daemon/http/openai_api.py serves them).

The request and answer documents are the handler's (text_generation's, or any handler routing
on ``url_path``): the schemas name only what the daemon reads (``model``) and what every answer
has in common; the rest is open, as OpenAI's own schemas are to its clients' extensions."""
from __future__ import annotations

from typing import Any

from daemon.http.openapi_builders import json_content, operation, ref, response

_STR = {"type": "string"}
_INT = {"type": "integer"}


def _openai_error(description: str) -> dict[str, Any]:
    return response(description, ref("OpenAIError"))


def _completion(operation_id: str, summary: str) -> dict[str, Any]:
    body = {"required": True,
            "description": "OpenAI's request document; the handler reads it (decoded as JSON "
                           "whatever the request's content type).",
            "content": json_content(ref("OpenAICompletionRequest"))}
    answer = {"description": "The handler's answer: a completion document, or with "
                             "`\"stream\": true` server-sent events (`data: {...}` lines, then "
                             "`data: [DONE]`).",
              "content": {"application/json": {"schema": {"type": "object"}},
                          "text/event-stream": {"schema": _STR}}}
    return operation(operation_id, summary, {
        "200": answer,
        "400": _openai_error("The body is not a JSON object naming its model, or the handler "
                             "refused a parameter."),
        "404": _openai_error("No model (or version) of that name."),
        "413": _openai_error("The request body exceeds max_request_size."),
        "500": _openai_error("The worker died while handling the request."),
        "503": _openai_error("No worker, job queue full (with Retry-After), or the handler "
                             "failed."),
        "504": _openai_error("The worker did not answer within the model's response_timeout."),
        "default": _openai_error("A status the handler chose (PredictionException)."),
    }, body=body)


def paths() -> dict[str, Any]:
    return {
        "/v1/completions": {"post": _completion(
            "openaiCompletions", "OpenAI text completion with the model named in the body (the "
            "handler sees `url_path` `v1/completions`).")},
        "/v1/chat/completions": {"post": _completion(
            "openaiChatCompletions", "OpenAI chat completion with the model named in the body "
            "(the handler sees `url_path` `v1/chat/completions`).")},
    }


MODEL_LIST_OPERATION = operation(
    "listModels", "The registered models (default versions): OpenAI's model list, with KServe "
    "v1's list of names beside it.",
    {"200": response("Registered models, sorted by name.", ref("ModelList"))})

SCHEMAS: dict[str, Any] = {
    "OpenAIError": {
        "type": "object", "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["message", "type", "param", "code"],
            "properties": {"message": _STR,
                           "type": {"type": "string", "description": "invalid_request_error "
                                    "(a 4xx) or server_error (a 5xx)."},
                           "param": {"type": "string", "nullable": True,
                                     "description": "The request field at fault."},
                           "code": {"type": "string", "nullable": True,
                                    "description": "model_not_found for an unknown model."}}}},
    },
    "OpenAICompletionRequest": {
        "type": "object", "required": ["model"],
        "properties": {"model": {"type": "string", "description": "A registered model's name, "
                                 "or `name/version`."},
                       "stream": {"type": "boolean", "default": False}},
    },
    "ModelList": {
        "type": "object", "required": ["object", "data", "models"],
        "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": {
                "type": "object", "required": ["id", "object", "created", "owned_by"],
                "properties": {"id": _STR, "object": {"type": "string", "enum": ["model"]},
                               "created": {**_INT, "description": "Registration time, Unix "
                                           "seconds."},
                               "owned_by": _STR}}},
            "models": {"type": "array", "items": _STR, "description": "KServe v1's list."},
        },
    },
}
