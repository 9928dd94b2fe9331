"""daemon.http.openapi: both documents are valid OpenAPI 3.0.1 and describe exactly SPEC 1 and 2."""
from __future__ import annotations

import json
import re
from typing import Any

import pytest
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate

from daemon.http.openapi import inference_document, management_document, model_document

METHODS = {"get", "put", "post", "delete", "options", "patch", "head", "trace"}

MANAGEMENT_ENDPOINTS = {
    ("options", "/"), ("get", "/api-description"),
    ("get", "/models"), ("post", "/models"),
    ("get", "/models/{model_name}"), ("put", "/models/{model_name}"),
    ("delete", "/models/{model_name}"),
    ("get", "/models/{model_name}/{model_version}"),
    ("put", "/models/{model_name}/{model_version}"),
    ("delete", "/models/{model_name}/{model_version}"),
    ("put", "/models/{model_name}/{model_version}/set-default"),
    # TorchServe answers OPTIONS on a model with that model's endpoints
    ("options", "/models/{model_name}"), ("options", "/models/{model_name}/{model_version}"),
    ("get", "/token"),
    ("get", "/v1/models/{model_name}"),   # KServe v1 readiness: TorchServe answers it here
    ("get", "/workflows"), ("post", "/workflows"),
    ("get", "/workflows/{workflow_name}"), ("delete", "/workflows/{workflow_name}"),
}

INFERENCE_ENDPOINTS = {
    ("options", "/"), ("get", "/api-description"),
    ("get", "/ping"), ("post", "/ping"),
    # TorchServe routes any method to its prediction paths (HEAD aside: no prediction for no body)
    *{(method, f"/{verb}/{{model_name}}{tail}")
      for method in ("get", "post", "put", "patch", "delete")
      for verb in ("predictions", "explanations")
      for tail in ("", "/{model_version}", "/{model_version}/{path}")},
    *{("options", f"/{verb}/{{model_name}}{tail}")      # the model's endpoints
      for verb in ("predictions", "explanations")
      for tail in ("", "/{model_version}", "/{model_version}/{path}")},
    ("post", "/v1/models/{model_name}:predict"), ("post", "/v1/models/{model_name}:explain"),
    ("get", "/v2"), ("get", "/v2/health/live"), ("get", "/v2/health/ready"),
    ("get", "/v2/models/{model_name}"),
    ("get", "/v2/models/{model_name}/versions/{model_version}"),
    ("get", "/v2/models/{model_name}/ready"),
    ("get", "/v2/models/{model_name}/versions/{model_version}/ready"),
    ("post", "/v2/models/{model_name}/infer"),
    ("post", "/v2/models/{model_name}/versions/{model_version}/infer"),
    ("post", "/invocations"), ("post", "/models/{model_name}/invoke"),
    ("get", "/v1/models"), ("get", "/v1/models/{model_name}"),
    ("post", "/v2/models/{model_name}/explain"),
    ("post", "/v2/models/{model_name}/versions/{model_version}/explain"),
    ("post", "/v1/completions"), ("post", "/v1/chat/completions"),
    # TorchServe's /wfpredict takes any method too
    *{(method, "/wfpredict/{workflow_name}")
      for method in ("get", "post", "put", "patch", "delete")},
    # Multi Model Server's prediction paths, which TorchServe still answers
    *{(method, path)
      for method in ("get", "post", "put", "patch", "delete")
      for path in ("/{model_name}/predict", "/{model_name}/{model_version}/predict")},
}

# Statuses SPEC 1 and 2 give for each endpoint (the documents may list more, e.g. 401).
MANAGEMENT_STATUSES = {
    ("get", "/models"): {"200"},
    ("post", "/models"): {"200", "202", "206", "400", "404", "405", "409", "413", "500"},
    ("get", "/models/{model_name}"): {"200", "404"},
    ("get", "/models/{model_name}/{model_version}"): {"200", "404"},
    ("put", "/models/{model_name}"): {"200", "202", "206", "400", "404", "500"},
    ("put", "/models/{model_name}/{model_version}"): {"200", "202", "206", "400", "404", "500"},
    ("delete", "/models/{model_name}"): {"200", "403", "404", "405"},
    ("delete", "/models/{model_name}/{model_version}"): {"200", "403", "404", "405"},
    ("put", "/models/{model_name}/{model_version}/set-default"): {"200", "404"},
    ("options", "/models/{model_name}"): {"200", "404"},
    ("options", "/models/{model_name}/{model_version}"): {"200", "404"},
    ("get", "/token"): {"200", "400", "401"},
    ("get", "/v1/models/{model_name}"): {"200", "404"},
    ("get", "/workflows"): {"200"},
    ("post", "/workflows"): {"200", "400", "404", "405", "409", "500"},
    ("get", "/workflows/{workflow_name}"): {"200", "404"},
    ("delete", "/workflows/{workflow_name}"): {"200", "404", "405"},
}
PREDICTION_STATUSES = {"200", "404", "413", "500", "503", "504", "507", "default"}
INFERENCE_STATUSES = {
    ("get", "/ping"): {"200", "500"},
    ("post", "/ping"): {"200", "500"},
    **{(method, path): PREDICTION_STATUSES for method, path in INFERENCE_ENDPOINTS
       if path.startswith(("/predictions", "/explanations", "/v1/models/{model_name}:",
                           "/models/")) and method != "options"},
    **{("options", path): {"200", "404"} for method, path in INFERENCE_ENDPOINTS
       if method == "options" and path != "/"},
    ("post", "/invocations"): PREDICTION_STATUSES | {"400"},
    ("get", "/v1/models"): {"200"},
    ("get", "/v1/models/{model_name}"): {"200", "404"},
    ("get", "/v2/health/ready"): {"200", "503"},
    ("get", "/v2/models/{model_name}/ready"): {"200", "400", "404"},
    ("get", "/v2/models/{model_name}/versions/{model_version}/ready"): {"200", "400", "404"},
    ("get", "/v2/models/{model_name}"): {"200", "404"},
    ("post", "/v1/completions"): {"200", "400", "404", "413", "503", "504", "default"},
    ("post", "/v1/chat/completions"): {"200", "400", "404", "413", "503", "504", "default"},
    **{(method, "/wfpredict/{workflow_name}"): {"200", "404", "500"}
       for method in ("get", "post", "put", "patch", "delete")},
}

# (path, method) -> {query parameter: (type, default or None)} from SPEC 1.1/1.3/1.4/1.5/1.6.
SCALE = {"min_worker": ("integer", 1), "max_worker": ("integer", None),
         "synchronous": ("boolean", False), "timeout": ("integer", -1)}
UNREGISTER = {"synchronous": ("boolean", None), "timeout": ("integer", None)}
DESCRIBE = {"customized": ("boolean", False)}
QUERY_PARAMETERS = {
    ("/models", "get"): {"limit": ("integer", 100), "next_page_token": ("integer", 0)},
    ("/models", "post"): {
        "url": ("string", None), "model_name": ("string", None), "handler": ("string", None),
        "runtime": ("string", None), "batch_size": ("integer", 1),
        "max_batch_delay": ("integer", 100), "initial_workers": ("integer", None),
        "synchronous": ("boolean", True), "response_timeout": ("integer", None),
        "startup_timeout": ("integer", None), "s3_sse_kms": ("boolean", False)},
    ("/models/{model_name}", "put"): SCALE,
    ("/models/{model_name}/{model_version}", "put"): SCALE,
    ("/models/{model_name}", "delete"): UNREGISTER,
    ("/models/{model_name}/{model_version}", "delete"): UNREGISTER,
    ("/models/{model_name}", "get"): DESCRIBE,
    ("/models/{model_name}/{model_version}", "get"): DESCRIBE,
    ("/token", "get"): {"type": ("string", None)},
    ("/workflows", "get"): {"limit": ("integer", 100), "next_page_token": ("integer", 0)},
    ("/workflows", "post"): {
        "url": ("string", None), "workflow_name": ("string", None),
        "response_timeout": ("integer", None), "startup_timeout": ("integer", None),
        "s3_sse_kms": ("boolean", False)},
}


@pytest.fixture(scope="module")
def management() -> dict[str, Any]:
    return management_document("0.1.0")


@pytest.fixture(scope="module")
def inference() -> dict[str, Any]:
    return inference_document("0.1.0")


def operations(doc: dict[str, Any]):
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield method, path, item, op


def parameters(item: dict[str, Any], op: dict[str, Any], where: str) -> dict[str, dict]:
    params = item.get("parameters", []) + op.get("parameters", [])
    return {p["name"]: p for p in params if p["in"] == where}


def schema_validator(doc: dict[str, Any], schema: dict[str, Any]) -> OAS30Validator:
    # Resolving "#/components/..." needs the components beside the schema being checked.
    return OAS30Validator({**schema, "components": doc["components"]})


def response_schema(doc: dict[str, Any], path: str, method: str, code: str) -> dict[str, Any]:
    return doc["paths"][path][method]["responses"][code]["content"]["application/json"]["schema"]


@pytest.mark.parametrize("build", [management_document, inference_document])
def test_document_is_valid_openapi(build) -> None:
    doc = build("1.2.3")
    validate(doc)
    assert doc["openapi"] == "3.0.1"
    assert doc["info"]["title"] == "TorchServe APIs"
    assert doc["info"]["version"] == "1.2.3"
    assert json.loads(json.dumps(doc)) == doc  # served as JSON as is: nothing JSON would change


def test_management_endpoints_are_exactly_spec_1(management: dict[str, Any]) -> None:
    assert {(m, p) for m, p, _, _ in operations(management)} == MANAGEMENT_ENDPOINTS


def test_inference_endpoints_are_exactly_spec_2(inference: dict[str, Any]) -> None:
    assert {(m, p) for m, p, _, _ in operations(inference)} == INFERENCE_ENDPOINTS


@pytest.mark.parametrize("build", [management_document, inference_document])
def test_path_templates_use_torchserve_names(build) -> None:
    for method, path, item, op in operations(build("1")):
        names = set(re.findall(r"{([^}]*)}", path))
        assert names <= {"model_name", "model_version", "path", "workflow_name"}, path
        assert "path" not in names or path.endswith("/{path}"), path
        assert set(parameters(item, op, "path")) == names, (method, path)


@pytest.mark.parametrize("build", [management_document, inference_document])
def test_operation_ids_unique_and_401_everywhere(build) -> None:
    ops = list(operations(build("1")))
    ids = [op["operationId"] for *_, op in ops]
    assert len(ids) == len(set(ids))
    for method, path, _, op in ops:
        assert "401" in op["responses"], (method, path)


@pytest.mark.parametrize(("doc_name", "expected"), [("management", MANAGEMENT_STATUSES),
                                                    ("inference", INFERENCE_STATUSES)])
def test_every_spec_status_is_documented(doc_name: str, expected: dict, request) -> None:
    doc = request.getfixturevalue(doc_name)
    for (method, path), statuses in expected.items():
        documented = set(doc["paths"][path][method]["responses"])
        assert statuses <= documented, (method, path, statuses - documented)


def test_query_parameters_types_and_defaults(management: dict[str, Any]) -> None:
    for (path, method), expected in QUERY_PARAMETERS.items():
        item = management["paths"][path]
        found = parameters(item, item[method], "query")
        assert set(found) == set(expected), (method, path)
        for name, (kind, default) in expected.items():
            schema = found[name]["schema"]
            assert schema["type"] == kind, (method, path, name)
            assert schema.get("default") == default, (method, path, name)
    # Only GET /token's type is mandatory: url may come in the JSON body instead.
    required = {(p, m, name) for (p, m) in QUERY_PARAMETERS
                for name, spec in parameters(management["paths"][p],
                                             management["paths"][p][m], "query").items()
                if spec["required"]}
    assert required == {("/token", "get", "type")}


def test_register_body_mirrors_query(management: dict[str, Any]) -> None:
    post = management["paths"]["/models"]["post"]
    body = post["requestBody"]
    assert body["required"] is False
    schema = body["content"]["application/json"]["schema"]
    assert schema["required"] == ["url"]
    query = {p["name"]: p["schema"] for p in post["parameters"]}
    assert schema["properties"] == query
    assert query["runtime"]["enum"] == ["python", "python3"]


SPEC_DESCRIBE = [{
    "modelName": "noop", "modelVersion": "1.0", "modelUrl": "noop.mar", "engine": "Torch",
    "runtime": "python", "minWorkers": 1, "maxWorkers": 1, "batchSize": 1, "maxBatchDelay": 100,
    "responseTimeout": 120, "startupTimeout": 120, "loadedAtStartup": False,
    "workers": [{"id": "9000", "startTime": "2026-11-25T13:44:53.034Z", "status": "READY",
                 "memoryUsage": 89247744, "pid": 4242, "gpu": False, "gpuUsage": "N/A"}],
    "jobQueueStatus": {"remainingCapacity": 100, "pendingRequests": 0}}]


def test_spec_examples_match_management_schemas(management: dict[str, Any]) -> None:
    def check(path: str, method: str, code: str, instance: Any) -> None:
        schema = response_schema(management, path, method, code)
        schema_validator(management, schema).validate(instance)

    check("/models/{model_name}", "get", "200", SPEC_DESCRIBE)
    check("/models/{model_name}/{model_version}", "get", "200", SPEC_DESCRIBE * 2)
    check("/models", "get", "200", {"nextPageToken": "4", "models": [
        {"modelName": "noop", "modelUrl": "noop.mar"}]})
    check("/models", "get", "200", {"models": []})  # last page: no token
    check("/models", "post", "202", {"status": "Processing worker updates..."})
    check("/models", "post", "409", {"code": 409, "type": "ConflictStatusException",
                                     "message": "Model version 1.0 is already registered for "
                                                "model noop"})
    preloaded = {**SPEC_DESCRIBE[0], "template": {"pid": 4240, "status": "READY",
                                                  "memoryUsage": 310378496}}
    preloaded["workers"] = [{**SPEC_DESCRIBE[0]["workers"][0], "template": 4240}]
    check("/models/{model_name}", "get", "200", [preloaded])
    broken = [{**SPEC_DESCRIBE[0], "workers": [{"id": 9000}]}]
    assert not schema_validator(
        management, response_schema(management, "/models/{model_name}", "get", "200"),
    ).is_valid(broken)


def test_spec_examples_match_inference_schemas(inference: dict[str, Any]) -> None:
    def valid(path: str, method: str, code: str, instance: Any) -> bool:
        schema = response_schema(inference, path, method, code)
        return schema_validator(inference, schema).is_valid(instance)

    assert valid("/ping", "get", "200", {"status": "Healthy"})
    assert valid("/ping", "get", "500", {"status": "Unhealthy"})
    assert valid("/v2", "get", "200", {"name": "torchd", "version": "0.1.0", "extensions": []})
    assert valid("/v2/health/live", "get", "200", {"live": True})
    assert valid("/v2/health/ready", "get", "503", {"ready": False})
    assert valid("/v2/models/{model_name}/ready", "get", "200", {"name": "mlp", "ready": True})
    assert valid("/v2/models/{model_name}", "get", "200", {
        "name": "mlp", "versions": ["1.0"], "platform": "pytorch",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}], "outputs": []})
    assert valid("/v2/models/{model_name}", "get", "404", {"error": "Model not found: x"})
    assert not valid("/v2/models/{model_name}", "get", "404",
                     {"code": 404, "type": "ModelNotFoundException", "message": "x"})
    assert valid("/v1/models", "get", "200", {
        "object": "list", "models": ["a"],
        "data": [{"id": "a", "object": "model", "created": 1767225600, "owned_by": "torchd"}]})
    assert not valid("/v1/models", "get", "200", {"models": ["a", "b"]})
    assert valid("/v1/completions", "post", "404", {"error": {
        "message": "The model `x` does not exist.", "type": "invalid_request_error",
        "param": "model", "code": "model_not_found"}})
    assert valid("/v1/chat/completions", "post", "400", {"error": {
        "message": "bad", "type": "invalid_request_error", "param": None, "code": None}})
    assert not valid("/v1/completions", "post", "400", {
        "code": 400, "type": "BadRequestException", "message": "bad"})
    assert valid("/v1/models/{model_name}", "get", "200", {"name": "mlp", "ready": False})
    assert not valid("/v1/models/{model_name}", "get", "200", {"name": "mlp"})
    assert valid("/invocations", "post", "400", {
        "code": 400, "type": "BadRequestException", "message": "Parameter model_name is ..."})
    assert valid("/predictions/{model_name}", "post", "503", {
        "code": 503, "type": "ServiceUnavailableException", "message": "Prediction failed"})


def test_v2_infer_request_schema(inference: dict[str, Any]) -> None:
    body = inference["paths"]["/v2/models/{model_name}/infer"]["post"]["requestBody"]
    validator = schema_validator(inference, body["content"]["application/json"]["schema"])
    assert validator.is_valid({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32",
                                           "data": [1.0, 2.0]}]})
    assert not validator.is_valid({"inputs": [{"name": "x"}]})


def test_documents_are_independent_copies() -> None:
    first = management_document("1")
    first["paths"]["/models"]["get"]["responses"].clear()
    first["components"]["schemas"]["Error"]["required"].append("bogus")
    second = management_document("1")
    validate(second)
    assert second["paths"]["/models"]["get"]["responses"]
    assert "bogus" not in second["components"]["schemas"]["Error"]["required"]


def test_v2_model_not_ready_is_a_400(inference: dict[str, Any]) -> None:
    for path in ("/v2/models/{model_name}/ready",
                 "/v2/models/{model_name}/versions/{model_version}/ready"):
        responses = inference["paths"][path]["get"]["responses"]
        assert "503" not in responses, path
        schema = response_schema(inference, path, "get", "400")
        assert schema_validator(inference, schema).is_valid(
            {"error": 'Model "mlp" version 1.0 is not ready'})


def test_post_ping_and_every_prediction_method_match_their_twins(
        inference: dict[str, Any]) -> None:
    paths = inference["paths"]
    assert paths["/ping"]["post"]["responses"] == paths["/ping"]["get"]["responses"]
    for method, path in INFERENCE_ENDPOINTS:
        if path.startswith(("/predictions/", "/explanations/")) and method != "options":
            other, post = paths[path][method], paths[path]["post"]
            assert other["responses"] == post["responses"], (method, path)
            assert other["requestBody"] == post["requestBody"], (method, path)


def test_url_path_routes_name_their_path_parameter(inference: dict[str, Any]) -> None:
    for verb in ("predictions", "explanations"):
        item = inference["paths"][f"/{verb}/{{model_name}}/{{model_version}}/{{path}}"]
        path = {p["name"]: p for p in item["parameters"]}["path"]
        assert path["in"] == "path" and path["required"] is True
        assert "url_path" in path["description"]
        assert "url_path" in item["post"]["summary"]


def test_workflow_examples_match_schemas(management: dict[str, Any]) -> None:
    """TorchServe's documented workflow answers (docs/workflow_management_api.md)."""
    def valid(path: str, method: str, code: str, instance: Any) -> bool:
        schema = response_schema(management, path, method, code)
        return schema_validator(management, schema).is_valid(instance)

    assert valid("/workflows/{workflow_name}", "get", "200", [{
        "workflowName": "myworkflow", "workflowUrl": "myworkflow.war", "minWorkers": 1,
        "maxWorkers": 1, "batchSize": 8, "maxBatchDelay": 5000,
        "workflowDag": "{preprocessing=[m1], m1=[postprocessing]}"}])
    assert valid("/workflows", "get", "200", {"nextPageToken": "4", "workflows": [
        {"workflowName": "myworkflow1", "workflowUrl": "myworkflow1.war"}]})
    assert not valid("/workflows", "get", "200", {"models": []})
    assert valid("/workflows", "post", "500", {
        "code": 500, "type": "WorkflowException",
        "message": "Workflow w has failed to register. Failures: [...]"})


@pytest.mark.parametrize("build", [management_document, inference_document])
def test_model_document_is_the_ports_model_paths_named(build) -> None:
    port = build("1.2.3")
    doc = model_document(port, "mlp", ["1.0", "2.0"], "2.0")
    validate(doc)
    named = {path.replace("{model_name}", "mlp") for path in port["paths"]
             if "{model_name}" in path}
    assert set(doc["paths"]) == named and named
    for path, item in doc["paths"].items():
        assert "{model_name}" not in path
        names = {p["name"] for p in item.get("parameters", [])}
        assert "model_name" not in names, path
        assert ("model_version" in names) == ("{model_version}" in path), path
    assert doc["info"]["version"] == "1.2.3" and "mlp" in doc["info"]["title"]
    assert "1.0, 2.0 (default)" in doc["info"]["description"]
    assert doc["components"] == port["components"] and doc["security"] == port["security"]
    doc["components"]["schemas"].clear()
    next(iter(doc["paths"].values())).clear()
    assert port == build("1.2.3")     # a copy: editing it leaves the port's document whole
