"""OpenAPI 3.0.1 documents served by `OPTIONS /` and `GET /api-description` (SPEC 1.8), and
one model's part of them by `OPTIONS /predictions/{m}` and `OPTIONS /models/{m}`.

Each document lists exactly the endpoints of its port, with TorchServe's path parameter names
(`model_name`, `model_version`) so clients generated from TorchServe's documents keep working.
The path tables live in openapi_management.py, openapi_inference.py and openapi_workflows.py,
the builders they share in openapi_builders.py; this module assembles the two documents.
"""
from __future__ import annotations

import copy
from typing import Any

from daemon.http import openapi_inference, openapi_management, openapi_workflows
from daemon.http.openapi_builders import document


def management_document(version: str) -> dict[str, Any]:
    """The management port's (8081) OpenAPI document; `version` is the server's version."""
    return document("Register, scale, describe, list and unregister models and workflows.",
                    version, {**openapi_management.paths(), **openapi_workflows.management_paths()},
                    {**openapi_management.SCHEMAS, **openapi_workflows.SCHEMAS})


def inference_document(version: str) -> dict[str, Any]:
    """The inference port's (8080) OpenAPI document; `version` is the server's version."""
    return document("Health, predictions and explanations: TorchServe's API, KServe v1, the "
                    "Open Inference Protocol v2 and OpenAI's completions; workflows.", version,
                    {**openapi_inference.paths(), **openapi_workflows.inference_paths()},
                    openapi_inference.SCHEMAS)


def model_document(port_document: dict[str, Any], name: str, versions: list[str],
                   default: str) -> dict[str, Any]:
    """One model's part of a port's document: its every path that names a model, with
    ``{model_name}`` filled in (TorchServe answers ``OPTIONS /predictions/{m}`` and
    ``OPTIONS /models/{m}`` with such a document). Components and security stay whole, so every
    reference resolves."""
    paths = {}
    for template, item in port_document["paths"].items():
        if "{model_name}" not in template:
            continue
        item = copy.deepcopy(item)
        params = [p for p in item.pop("parameters", []) if p["name"] != "model_name"]
        if params:
            item["parameters"] = params
        paths[template.replace("{model_name}", name)] = item
    listed = ", ".join(f"{v} (default)" if v == default else v for v in versions)
    info = {**port_document["info"], "title": f"Model {name}",
            "description": f"The endpoints of model {name} on this port; its versions: "
                           f"{listed}."}
    rest = {key: copy.deepcopy(value) for key, value in port_document.items()
            if key not in ("info", "paths")}
    return {**rest, "info": info, "paths": paths}
