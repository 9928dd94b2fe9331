"""Inference API routes (port 8080): TorchServe predictions/explanations, KServe v1, OIP v2."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from daemon.errors import InternalServerError, ResourceNotFound, ServiceUnavailable, \
    TorchdError, error_response
from daemon.http_common import NoResponse, read_body, reason_phrase, request_id
from daemon.registry import ModelVersion
from daemon.scheduler import Job, QueueFull, queue_full_error
from protocol import messages

logger = logging.getLogger(__name__)
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


# ---- request → job --------------------------------------------------------------------------

async def read_parameters(request: Request) -> list[dict[str, Any]]:
    limit = request.app.state.config.max_request_size
    body = await read_body(request, limit)
    content_type = request.headers.get("content-type")
    if content_type and content_type.split(";")[0].strip().lower() in FORM_TYPES:
        request._body = body   # starlette's form parser reads the cached body
        # max_request_size bounds the whole body already; starlette's own 1 MB per field would
        # refuse fields TorchServe accepts
        async with request.form(max_part_size=limit) as form:   # closes spooled files
            params = []
            for name, value in form.multi_items():
                if isinstance(value, str):
                    params.append(messages.parameter(name, None, value.encode()))
                else:
                    params.append(messages.parameter(name, value.content_type,
                                                     await value.read()))
            return params
    return [messages.parameter("body", content_type, body)]


def new_job(request: Request, params: list[dict[str, Any]], extra_headers: tuple = ()) -> Job:
    rid = request_id(request)
    headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.scope["headers"]]
    headers.extend([list(h) for h in extra_headers])
    return Job(id=rid, request=messages.request(rid, headers, params), arrival=time.monotonic())


def submit(request: Request, mv: ModelVersion, job: Job) -> None:
    if not request.app.state.supervisor.can_serve(mv):
        raise ServiceUnavailable(f'Model "{mv.name}" has no worker to serve inference request. '
                                 'Please use scale workers API to add workers.')
    try:
        mv.queue.submit(job)
    except QueueFull:
        raise queue_full_error(mv.name) from None


async def _watch_disconnect(request: Request, mv: ModelVersion, job: Job) -> None:
    """A client that hangs up before dispatch is dropped from the queue, never run."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            mv.queue.abandon(job)
            return


async def first_event(request: Request, mv: ModelVersion, job: Job) -> tuple[str, Any]:
    watcher = asyncio.get_running_loop().create_task(_watch_disconnect(request, mv, job))
    try:
        return await job.events.get()
    finally:
        watcher.cancel()


def record(request: Request, mv: ModelVersion, job: Job, status: int, named: bool) -> None:
    """Latency hooks: arrival, dispatch and answer times (TorchServe's ts_* metrics)."""
    now = time.monotonic()
    dispatched = job.dispatched_at or now
    request.app.state.metrics.observe_request(
        mv.name, mv.version, status, (dispatched - job.arrival) * 1e6,
        (now - job.arrival) * 1e6, named_version=named)


# ---- job → response -------------------------------------------------------------------------

def worker_error(response: dict[str, Any]) -> TorchdError:
    """A handler's failure. TorchServe types every one InternalServerException, whatever the
    status (513 from a PredictionException, 503 "Prediction failed", 507 ...)."""
    return InternalServerError(response.get("reason") or "Prediction failed",
                               status=response["status"])


ErrorRenderer = Callable[[TorchdError], Response]


def render(response: dict[str, Any], render_error: ErrorRenderer = error_response) -> Response:
    if response.get("error"):
        return render_error(worker_error(response))
    reason_phrase.set(response.get("reason"))
    return Response(response["body"], status_code=response.get("status") or 200,
                    headers=handler_headers(response))


def handler_headers(response: dict[str, Any]) -> dict[str, str]:
    """The headers the handler set, and its content type exactly as it gave it (starlette's
    media_type would append a charset to text types)."""
    headers = dict(response.get("headers") or ())
    if response.get("content_type"):
        headers["content-type"] = response["content_type"]
    return headers


class PartsResponse(StreamingResponse):
    """The handler's parts as the chunks of one chunked response; its return value is the last.

    A failure after the first part ends the response without its closing empty chunk: the status
    line has gone already, so the client must see a broken body rather than a complete one.
    (Returning without the final body message makes hypercorn close the connection.)
    """

    def __init__(self, first: dict[str, Any], job: Job) -> None:
        self.first, self.job = first, job
        self.status_code = first.get("status") or 200
        self.background = None
        self.init_headers(handler_headers(first))

    async def stream_response(self, send: Any) -> None:
        reason_phrase.set(self.first.get("reason"))
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.first["body"], "more_body": True})
        while True:
            kind, payload = await self.job.events.get()
            if kind == "gone":
                return
            if kind == "error" or payload.get("error"):
                message = payload.message if kind == "error" else payload.get("reason")
                logger.error("request %s failed after its stream began: %s", self.job.id, message)
                return
            last = kind == "final"
            await send({"type": "http.response.body", "body": payload["body"],
                        "more_body": not last})
            if last:
                return


async def run_prediction(request: Request, name: str, version: str | None,
                         extra_headers: tuple = (),
                         render_error: ErrorRenderer = error_response) -> Response:
    """One request through the queue to a worker and back; errors found after the request was
    taken are rendered by ``render_error`` (TorchServe's JSON, or OIP v2's for /v2 paths)."""
    params = await read_parameters(request)
    mv = request.app.state.registry.get(name, version)
    job = new_job(request, params, extra_headers)
    named = version is not None
    try:
        submit(request, mv, job)
    except TorchdError as exc:
        record(request, mv, job, exc.status, named)
        raise
    kind, payload = await first_event(request, mv, job)
    if kind == "gone":
        record(request, mv, job, NoResponse.status, named)   # it arrived: it counts
        return NoResponse()
    if kind == "error":
        record(request, mv, job, payload.status, named)
        return render_error(payload)
    record(request, mv, job, payload.get("status") or 200, named)
    if kind == "part":
        return PartsResponse(payload, job)
    return render(payload, render_error)


# ---- TorchServe and KServe v1 routes --------------------------------------------------------

async def predictions(request: Request) -> Response:
    p = request.path_params
    return await run_prediction(request, p["model_name"], p.get("model_version"))


async def explanations(request: Request) -> Response:
    p = request.path_params
    return await run_prediction(request, p["model_name"], p.get("model_version"),
                                (("explain", "True"),))


async def kserve_v1(request: Request) -> Response:
    name, _, verb = request.path_params["target"].rpartition(":")
    if verb == "predict" and name:
        return await run_prediction(request, name, None)
    if verb == "explain" and name:
        return await run_prediction(request, name, None, (("explain", "True"),))
    raise ResourceNotFound("Requested resource is not found, please refer to API document.")


async def ping(request: Request) -> Response:
    healthy = request.app.state.health.healthy()
    return JSONResponse({"status": "Healthy" if healthy else "Unhealthy"},
                        status_code=200 if healthy else 500)


async def api_description(request: Request) -> Response:
    return JSONResponse(request.app.state.api_document)


# ---- Open Inference Protocol v2 -------------------------------------------------------------

def v2_error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _v2_model(request: Request) -> ModelVersion:
    p = request.path_params
    return request.app.state.registry.get(p["model_name"], p.get("model_version"))


async def v2_server(request: Request) -> Response:
    return JSONResponse({"name": "torchd", "version": request.app.state.server_version,
                         "extensions": ["model_repository_management"]})


async def v2_live(request: Request) -> Response:
    return JSONResponse({"live": True})


async def v2_ready(request: Request) -> Response:
    ready = request.app.state.health.ready()
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


async def v2_model_ready(request: Request) -> Response:
    try:
        mv = _v2_model(request)
    except TorchdError as exc:
        return v2_error(exc.message, exc.status)
    ready = request.app.state.supervisor.ready_count(mv) >= max(1, mv.settings.min_workers)
    if not ready:
        # a 4xx, which v2 clients read as "not ready" (a 5xx reads as a server failure)
        return v2_error(f'Model "{mv.name}" version {mv.version} is not ready', 400)
    return JSONResponse({"name": mv.name, "ready": True})


async def v2_metadata(request: Request) -> Response:
    try:
        mv = _v2_model(request)
    except TorchdError as exc:
        return v2_error(exc.message, exc.status)
    model = request.app.state.registry.model(mv.name)
    declared = mv.yaml_config.get("v2") or mv.yaml_config
    return JSONResponse({"name": mv.name, "versions": sorted(model.versions),
                         "platform": "pytorch", "inputs": _tensors(declared.get("inputs")),
                         "outputs": _tensors(declared.get("outputs"))})


def _tensors(value: Any) -> list:
    return [t for t in value if isinstance(t, dict)] if isinstance(value, list) else []


def _v2_error_of(exc: TorchdError) -> Response:
    return v2_error(exc.message, exc.status)


async def v2_infer(request: Request) -> Response:
    p = request.path_params
    try:
        response = await run_prediction(request, p["model_name"], p.get("model_version"),
                                        render_error=_v2_error_of)
    except TorchdError as exc:
        return _v2_error_of(exc)
    if response.status_code < 400 and not response.headers.get("content-type"):
        response.headers["content-type"] = "application/json"
    return response


class Health:
    """/ping, /v2/health/ready: every default version has its minWorkers READY (or is briefly
    recovering from a crash, for /ping), and the daemon is not draining."""

    def __init__(self, registry: Any, supervisor: Any) -> None:
        self.registry = registry
        self.supervisor = supervisor
        self.draining = False

    def healthy(self) -> bool:
        return not self.draining and all(self.supervisor.healthy(mv)
                                         for mv in self.registry.defaults())

    def ready(self) -> bool:
        return not self.draining and all(
            self.supervisor.ready_count(mv) >= mv.settings.min_workers
            for mv in self.registry.defaults())


ROUTES = [
    Route("/", api_description, methods=["OPTIONS"]),
    Route("/api-description", api_description, methods=["GET"]),
    Route("/ping", ping, methods=["GET", "POST"]),
    Route("/predictions/{model_name}", predictions, methods=["POST", "PUT"]),
    Route("/predictions/{model_name}/{model_version}", predictions, methods=["POST", "PUT"]),
    Route("/explanations/{model_name}", explanations, methods=["POST"]),
    Route("/explanations/{model_name}/{model_version}", explanations, methods=["POST"]),
    Route("/v1/models/{target}", kserve_v1, methods=["POST"]),
    Route("/v2", v2_server, methods=["GET"]),
    Route("/v2/health/live", v2_live, methods=["GET"]),
    Route("/v2/health/ready", v2_ready, methods=["GET"]),
    Route("/v2/models/{model_name}", v2_metadata, methods=["GET"]),
    Route("/v2/models/{model_name}/ready", v2_model_ready, methods=["GET"]),
    Route("/v2/models/{model_name}/infer", v2_infer, methods=["POST"]),
    Route("/v2/models/{model_name}/versions/{model_version}", v2_metadata, methods=["GET"]),
    Route("/v2/models/{model_name}/versions/{model_version}/ready", v2_model_ready,
          methods=["GET"]),
    Route("/v2/models/{model_name}/versions/{model_version}/infer", v2_infer, methods=["POST"]),
]
