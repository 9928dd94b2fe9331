"""The workflow routes (TorchServe's workflow API): /workflows on the management port,
/wfpredict on the inference port. They parse and render; daemon/workflows/manager.py holds the
rules."""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from daemon.errors import InternalServerError
from daemon.http.common import (DISCONNECT_HOOKS, JSONAnswer, NoResponse, Params, read_body,
                                 status_json)
from daemon.http.management import int_param, json_body
from daemon.http.predict import any_method_route, form_parameters, is_form, request_headers
from daemon.workflows.manager import WorkflowManager, WorkflowRequest
from protocol import messages

logger = logging.getLogger(__name__)
LEAF_CONTENT_TYPE = "application/json"   # TorchServe's, whatever the leaf answered


def workflows(request: Request) -> WorkflowManager:
    return request.app.state.workflows


# ---- management -----------------------------------------------------------------------------

async def register(request: Request) -> Response:
    p = Params.from_query(request, await json_body(request))
    req = WorkflowRequest(url=p.str("url"), workflow_name=p.str("workflow_name") or None,
                          response_timeout=int_param(p, "response_timeout"),
                          startup_timeout=int_param(p, "startup_timeout"),
                          s3_sse_kms=p.bool("s3_sse_kms", False))
    outcome = await workflows(request).register(req)
    return status_json(outcome.message, outcome.status)


async def list_workflows(request: Request) -> Response:
    p = Params.from_query(request)
    return JSONAnswer(workflows(request).list_workflows(int_param(p, "limit", 100),
                                                        int_param(p, "next_page_token", 0)))


async def describe(request: Request) -> Response:
    return JSONAnswer(workflows(request).describe(request.path_params["workflow_name"]))


async def unregister(request: Request) -> Response:
    outcome = await workflows(request).unregister(request.path_params["workflow_name"])
    return status_json(outcome.message, outcome.status)


MANAGEMENT_ROUTES = [
    Route("/workflows", list_workflows, methods=["GET"]),
    Route("/workflows", register, methods=["POST"]),
    Route("/workflows/{workflow_name}", describe, methods=["GET"]),
    Route("/workflows/{workflow_name}", unregister, methods=["DELETE"]),
]


# ---- inference ------------------------------------------------------------------------------

async def predict(request: Request) -> Response:
    """The request through the workflow's DAG; the leaf's output as JSON (several leaves: an
    object of each leaf's output by node). A client that hangs up drops every node's call."""
    name = request.path_params["workflow_name"]
    manager = workflows(request)
    manager.get(name)   # 404 before the body is read
    limit = request.app.state.config.max_request_size
    body = await read_body(request, limit)
    params = await _parameters(request, body, limit)
    headers = request_headers(dict(request.scope), ())
    run = asyncio.ensure_future(manager.predict(name, headers, params))
    hooks = request.scope.get(DISCONNECT_HOOKS)
    if hooks is not None:
        hooks.append(run.cancel)
    try:
        leaves = await run
    except asyncio.CancelledError:
        if run.cancelled() and not _task_cancelled():
            return NoResponse()   # the client hung up
        raise
    finally:
        if hooks is not None:
            hooks.remove(run.cancel)
    return _leaf_response(leaves)


def _task_cancelled() -> bool:
    """This request's own task is being cancelled (the server is stopping), as opposed to the
    DAG's run being cancelled by the client's hang-up."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _parameters(request: Request, body: bytes, limit: int) -> list[dict[str, Any]]:
    """As /predictions: a form's fields one parameter each, else one ``body`` parameter."""
    content_type = request.headers.get("content-type")
    if is_form(content_type):
        return await form_parameters(dict(request.scope), body, limit)
    return [messages.parameter("body", content_type, body)]


def _leaf_response(leaves: list[tuple[str, bytes]]) -> Response:
    if len(leaves) == 1:
        return Response(leaves[0][1], media_type=LEAF_CONTENT_TYPE)
    outputs = {}
    for node, output in leaves:
        try:
            outputs[node] = json.loads(output)
        except ValueError:
            raise InternalServerError(f"Workflow leaf node {node} did not answer JSON: "
                                      "a workflow with several leaves answers their outputs "
                                      "as one JSON object") from None
    return JSONAnswer(outputs)


# TorchServe's /wfpredict takes any method, as its /predictions does
INFERENCE_ROUTES = [any_method_route("/wfpredict/{workflow_name}", predict)]
