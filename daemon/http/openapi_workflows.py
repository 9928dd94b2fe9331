"""The workflow routes in the OpenAPI documents (daemon/http/openapi.py assembles them).

TorchServe's own documents leave its workflow routes out; torchd's list every route a port
serves (SPEC 1.8), these included, under TorchServe's documented path name ``workflow_name``.
"""
from __future__ import annotations

from typing import Any

from daemon.http.openapi_builders import (
    ANY,
    boolean,
    error,
    integer,
    operation,
    page_parameters,
    path_param,
    query,
    ref,
    response,
    status,
    string,
)
from daemon.http.openapi_inference import PREDICTION_BODY, TORCHSERVE_METHODS

WORKFLOW_NAME = path_param("workflow_name", "The workflow's registered name.")

REGISTER_PARAMETERS = [
    query("url", string(), "The workflow archive (.war): a file directly in the workflow store "
          "(default: the model store), or an allowed http(s)/s3 URL, downloaded into it. "
          "Required, in the query or the JSON body."),
    query("workflow_name", string(), "The name to register under. Default: the manifest's "
          "workflowName."),
    query("response_timeout", integer(), "The nodes' response_timeout in seconds. Default: "
          "the configured default_response_timeout (120)."),
    query("startup_timeout", integer(), "The nodes' startup_timeout in seconds. Default: "
          "the configured default_startup_timeout (120)."),
    query("s3_sse_kms", boolean(False), "Fetch an https S3 URL with the AWS credentials of "
          "the server's environment."),
]
MODEL_API_OFF = error("The model API is disabled (MethodNotAllowedException).")
NOT_FOUND = error("No such workflow (WorkflowNotFoundException).")


def _register() -> dict[str, Any]:
    schema = {"type": "object", "required": ["url"],
              "properties": {p["name"]: p["schema"] for p in REGISTER_PARAMETERS}}
    body = {"required": False, "description": "The same fields as the query parameters, read "
            "when Content-Type is application/json.",
            "content": {"application/json": {"schema": schema}}}
    return operation(
        "registerWorkflow", "Register a workflow archive: each DAG node becomes a model "
        "<workflow>__<node> with its workers (all of them, or none on failure).",
        {"200": status("Registered; every node's workers are READY."),
         "400": error("Missing url, failed download (DownloadArchiveException), invalid "
                      "archive or spec (InvalidWorkflowException) or DAG "
                      "(InvalidDAGException)."),
         "404": error("Archive not found in the workflow store, relative or disallowed url "
                      "(WorkflowNotFoundException)."),
         "405": MODEL_API_OFF,
         "409": error("A workflow of that name is registered (ConflictStatusException)."),
         "413": error("The request body exceeds max_request_size."),
         "500": error("A node failed to register or start (WorkflowException); the workflow "
                      "was rolled back, leaving no node registered.")},
        REGISTER_PARAMETERS, body)


def management_paths() -> dict[str, Any]:
    return {
        "/workflows": {
            "get": operation(
                "listWorkflows", "List the workflows, sorted by name.",
                {"200": response("A page of workflows.", ref("WorkflowList"))},
                page_parameters()),
            "post": _register(),
        },
        "/workflows/{workflow_name}": {
            "parameters": [WORKFLOW_NAME],
            "get": operation("describeWorkflow", "Describe a workflow.",
                             {"200": response("One element.", {
                                 "type": "array", "items": ref("WorkflowDescription")}),
                              "404": NOT_FOUND}),
            "delete": operation("unregisterWorkflow", "Unregister a workflow and every "
                                "model of its nodes.",
                                {"200": status("Unregistered."), "404": NOT_FOUND,
                                 "405": MODEL_API_OFF,
                                 "500": error("A node could not be unregistered.")}),
        },
    }


def _predict(method: str) -> dict[str, Any]:
    operation_id = ("workflowPredictions" if method == "post"
                    else f"{method}WorkflowPredictions")
    return operation(
        operation_id, "Run a request through the workflow's DAG; the leaf node's output "
        "(several leaves: an object of their outputs by node).",
        {"200": {"description": "The leaf node's output (Content-Type: application/json).",
                 "content": {"application/json": {"schema": ANY}}},
         "404": NOT_FOUND,
         "413": error("The request body exceeds max_request_size."),
         "500": error("A node failed after its retries, or did not answer within its "
                      "timeout-ms: Error executing <node>.")},
        body=PREDICTION_BODY)


def inference_paths() -> dict[str, Any]:
    item: dict[str, Any] = {"parameters": [WORKFLOW_NAME]}
    for method in TORCHSERVE_METHODS:
        item[method] = _predict(method)
    return {"/wfpredict/{workflow_name}": item}


SCHEMAS: dict[str, Any] = {
    "WorkflowList": {
        "type": "object",
        "required": ["workflows"],
        "properties": {
            "nextPageToken": string(description="Offset of the next page; absent on the last "
                                    "page."),
            "workflows": {"type": "array", "items": {
                "type": "object", "required": ["workflowName", "workflowUrl"],
                "properties": {"workflowName": string(), "workflowUrl": string()}}},
        },
    },
    "WorkflowDescription": {
        "type": "object",
        "required": ["workflowName", "workflowUrl", "minWorkers", "maxWorkers", "batchSize",
                     "maxBatchDelay", "workflowDag"],
        "properties": {
            "workflowName": string(),
            "workflowUrl": string(description="The url given at registration."),
            "minWorkers": {"type": "integer", "description": "The spec's global setting."},
            "maxWorkers": {"type": "integer", "description": "The spec's global setting."},
            "batchSize": {"type": "integer", "description": "The spec's global setting."},
            "maxBatchDelay": {"type": "integer", "description": "The spec's global setting."},
            "workflowDag": string(description="The spec's dag, as TorchServe shows it: "
                                  "{pre=[m1, m2], m1=[post]}."),
        },
    },
}
