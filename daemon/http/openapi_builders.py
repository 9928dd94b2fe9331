"""The small builders the OpenAPI documents are made of (daemon/http/openapi.py).

Query parameters the server parses leniently (a malformed integer falls back to its default) are
still declared with the type a client should send. Token auth may be on or off depending on the
configuration, so every operation allows anonymous access or a bearer key and lists 401.
The path tables (openapi_management.py, openapi_inference.py) build on these; `document`
assembles one port's document.
"""
from __future__ import annotations

import copy
import logging
from typing import Any

logger = logging.getLogger(__name__)

OPENAPI_VERSION = "3.0.1"
TITLE = "TorchServe APIs"  # clients identify the server by this title

_UNSET = object()
ANY: dict[str, Any] = {}  # a schema any JSON value satisfies


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def response(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON response (or one without a body when `schema` is None)."""
    if schema is None:
        return {"description": description}
    return {"description": description, "content": json_content(schema)}


def error(description: str) -> dict[str, Any]:
    """A response carrying TorchServe's error document."""
    return response(description, ref("Error"))


def status(description: str) -> dict[str, Any]:
    """A response carrying a `{"status": ...}` document."""
    return response(description, ref("Status"))


def query(name: str, schema: dict[str, Any], description: str,
          required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema}


def page_parameters() -> list[dict[str, Any]]:
    """TorchServe's paging of the list endpoints (`GET /models`, `GET /workflows`)."""
    return [query("limit", integer(100), "Page size; values above 100 or below 0 mean 100."),
            query("next_page_token", integer(0), "Offset of the page: the nextPageToken of the "
                  "previous page. Negative values mean 0.")]


def path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string"}}


def integer(default: Any = _UNSET, minimum: int | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    if default is not _UNSET:
        schema["default"] = default
    if minimum is not None:
        schema["minimum"] = minimum
    return schema


def boolean(default: bool | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "boolean"}
    if default is not None:
        schema["default"] = default
    return schema


def string(**extra: Any) -> dict[str, Any]:
    return {"type": "string", **extra}


def operation(operation_id: str, summary: str, responses: dict[str, Any],
              parameters: list[dict[str, Any]] | None = None,
              body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One operation; adds the 401 every endpoint answers when token auth is on."""
    op: dict[str, Any] = {"operationId": operation_id, "summary": summary}
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = body
    op["responses"] = {**responses, "401": error("Token authorization is on and the request "
                                                 "carries no valid key (InvalidKeyException).")}
    return op


def description_paths() -> dict[str, Any]:
    """`OPTIONS /` and `GET /api-description`, on both ports."""
    ok = {"200": response("This document.", {"type": "object"})}
    return {
        "/": {"options": operation("apiDescription", "This port's OpenAPI document.", ok)},
        "/api-description": {"get": operation("getApiDescription",
                                              "This port's OpenAPI document.", ok)},
    }


def model_description(operation_id: str) -> dict[str, Any]:
    """OPTIONS on a model's paths, as TorchServe answers it on both ports."""
    return operation(operation_id, "The model's endpoints on this port: this port's document "
                     "with only the paths that name a model, the model's name filled in.",
                     {"200": response("An OpenAPI document.", {"type": "object"}),
                      "404": error("Unknown model or version.")})


COMMON_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["code", "type", "message"],
        "properties": {
            "code": {"type": "integer", "description": "The HTTP status."},
            "type": {"type": "string", "description": "TorchServe's exception name, e.g. "
                     "ModelNotFoundException."},
            "message": {"type": "string"},
        },
    },
    "Status": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}},
    },
}


def document(description: str, version: str, paths: dict[str, Any],
             schemas: dict[str, Any]) -> dict[str, Any]:
    # A deep copy: the tables are shared module state and a caller may edit its document.
    return copy.deepcopy({
        "openapi": OPENAPI_VERSION,
        "info": {"title": TITLE, "description": description, "version": version},
        "paths": {**description_paths(), **paths},
        "components": {
            "schemas": {**COMMON_SCHEMAS, **schemas},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "A key from key_file.json."}},
        },
        # Anonymous access is allowed while token auth is off; a bearer key otherwise.
        "security": [{}, {"bearer": []}],
    })
