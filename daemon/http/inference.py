"""Inference API routes (port 8080) other than the predictions themselves (daemon/http/predict.py):
/ping, the API description, and OIP v2's health and metadata."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from daemon.errors import TorchdError
from daemon.http.common import DESCRIPTION_ROUTES, JSONAnswer, model_api_description
from daemon.http.predict import TORCHSERVE_TAILS, v2_error
from daemon.jsonlayout import document_bytes
from daemon.models.oip import EXTENSIONS, SERVER_NAME, model_metadata, model_ready
from daemon.models.registry import ModelVersion


# /ping's two answers, laid out once: load balancers ask it every few seconds, per replica
PING_ANSWERS = {True: (200, document_bytes({"status": "Healthy"})),
                False: (500, document_bytes({"status": "Unhealthy"}))}


async def ping(request: Request) -> Response:
    status, body = PING_ANSWERS[request.app.state.health.healthy()]
    return Response(body, status_code=status, media_type="application/json")


# ---- Open Inference Protocol v2 -------------------------------------------------------------

def _v2_model(request: Request) -> ModelVersion:
    p = request.path_params
    return request.app.state.registry.get(p["model_name"], p.get("model_version"))


async def v2_server(request: Request) -> Response:
    return JSONAnswer({"name": SERVER_NAME, "version": request.app.state.server_version,
                       "extensions": list(EXTENSIONS)})


async def v2_live(request: Request) -> Response:
    return JSONAnswer({"live": True})


async def v2_ready(request: Request) -> Response:
    ready = request.app.state.health.ready()
    return JSONAnswer({"ready": ready}, status_code=200 if ready else 503)


async def v2_model_ready(request: Request) -> Response:
    try:
        mv = _v2_model(request)
    except TorchdError as exc:
        return v2_error(exc.message, exc.status)
    if not model_ready(request.app.state.supervisor, mv):
        # a 4xx, which v2 clients read as "not ready" (a 5xx reads as a server failure)
        return v2_error(f'Model "{mv.name}" version {mv.version} is not ready', 400)
    return JSONAnswer({"name": mv.name, "ready": True})


async def v2_metadata(request: Request) -> Response:
    try:
        mv = _v2_model(request)
    except TorchdError as exc:
        return v2_error(exc.message, exc.status)
    return JSONAnswer(model_metadata(request.app.state.registry, mv))


# The prediction routes are daemon/http/predict.py's.
ROUTES = [
    *DESCRIPTION_ROUTES,
    Route("/ping", ping, methods=["GET", "POST"]),
    Route("/v2", v2_server, methods=["GET"]),
    Route("/v2/health/live", v2_live, methods=["GET"]),
    Route("/v2/health/ready", v2_ready, methods=["GET"]),
    Route("/v2/models/{model_name}", v2_metadata, methods=["GET"]),
    Route("/v2/models/{model_name}/ready", v2_model_ready, methods=["GET"]),
    Route("/v2/models/{model_name}/versions/{model_version}", v2_metadata, methods=["GET"]),
    Route("/v2/models/{model_name}/versions/{model_version}/ready", v2_model_ready,
          methods=["GET"]),
    # TorchServe answers OPTIONS on a model's prediction paths with the model's endpoints; the
    # predictions themselves take every other method (HotRoutes never sees OPTIONS).
    *[Route(f"/{verb}/{{model_name}}{tail}", model_api_description, methods=["OPTIONS"])
      for verb in ("predictions", "explanations") for tail in TORCHSERVE_TAILS],
]
