"""Builds the three starlette apps (inference, management, metrics) around one Core."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from daemon.core import Core
from daemon.http import compat, inference

from daemon.http import management
from daemon.http import workflows as workflow_routes
from daemon.errors import BadRequest, InvalidKey, TorchdError
from daemon.http.common import EXCEPTION_HANDLERS, ApiDescriptions, JSONAnswer, RequestContext
from daemon.http.direct import DirectPath
from daemon.http.openai_api import openai_prediction_routes
from daemon.http.hot_routes import HotRoutes
from daemon.http.predict import Predictor, prediction_routes


# OIP health answers (true/false, nothing else) need no token: a Kubernetes probe or a load
# balancer's health check cannot send one. /ping keeps TorchServe's token check.
OPEN_PROBES = frozenset({"/v2/health/live", "/v2/health/ready"})
# An ASGI app (called with scope, receive, send): HotRoutes takes its scope as a plain dict,
# narrower than starlette's ASGIApp type, as RequestContext's app may be.
App = Callable[..., Awaitable[None]]


def _state(app: Starlette, core: Core, **extra: Any) -> None:
    app.state.config = core.config
    app.state.registry = core.registry
    app.state.supervisor = core.supervisor
    app.state.manager = core.manager
    app.state.workflows = core.workflows
    app.state.metrics = core.metrics
    app.state.health = core.health
    app.state.tokens = core.tokens
    app.state.server_version = core.version
    for key, value in extra.items():
        setattr(app.state, key, value)


def _wrap(app: App, core: Core, name: str, token_kind: str | None) -> RequestContext:
    config = core.config
    wrapped: App = app
    if config.cors_allowed_origin:
        wrapped = CORSMiddleware(
            wrapped, allow_origins=[o.strip() for o in config.cors_allowed_origin.split(",")],
            allow_methods=_split(config.cors_allowed_methods) or ["*"],
            allow_headers=_split(config.cors_allowed_headers) or ["*"])
    authorize: Callable[[dict], TorchdError | None] | None = None
    if token_kind is not None and core.tokens.enabled:
        def authorize(scope: dict) -> TorchdError | None:
            if scope["path"] == "/token":
                return None   # checked against the API key by the route itself
            if token_kind == "inference" and scope["path"].rstrip("/") in OPEN_PROBES:
                return None
            return core.tokens.check(token_kind, scope)
    count = core.metrics.count_status if name != "metrics" else None
    return RequestContext(wrapped, name, count, authorize)


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


async def rotate_token(request: Request) -> Response:
    tokens = request.app.state.tokens
    if not tokens.check_api(request.headers.get("authorization")):
        raise InvalidKey("Token Authorization failed. Token either incorrect, expired, or not "
                         "provided correctly")
    kind = request.query_params.get("type", "")
    if kind not in ("management", "inference"):
        raise BadRequest("Parameter type must be management or inference")
    return JSONAnswer({kind: {"key": tokens.rotate(kind)}})


def build_management_app(core: Core) -> RequestContext:
    routes = [*management.ROUTES, *compat.MANAGEMENT_ROUTES, *workflow_routes.MANAGEMENT_ROUTES,
              Route("/token", rotate_token, methods=["GET"])]
    app = Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)
    app.router.redirect_slashes = False
    _state(app, core, api_descriptions=ApiDescriptions(core.documents["management"]))
    return _wrap(app, core, "management", "management")


def build_inference_app(core: Core) -> RequestContext:
    predictor = Predictor(core.predictions, core.config.max_request_size)
    hot = [*prediction_routes(predictor), *compat.compat_prediction_routes(predictor),
           *openai_prediction_routes(predictor)]
    app = Starlette(routes=[*inference.ROUTES, *compat.ROUTES, *workflow_routes.INFERENCE_ROUTES,
                            *hot, *compat.legacy_prediction_routes(predictor)],
                    exception_handlers=EXCEPTION_HANDLERS)
    app.router.redirect_slashes = False
    _state(app, core, api_descriptions=ApiDescriptions(core.documents["inference"]))
    routes = HotRoutes(app, hot)
    context = _wrap(routes, core, "inference", "inference")
    if not core.config.cors_allowed_origin:   # CORS headers come from the ASGI middleware
        context.direct = DirectPath(predictor, routes, context)
    return context


def build_metrics_app(core: Core) -> RequestContext:
    async def metrics(request: Request) -> Response:
        # TorchServe's ?name[]=<family>&name[]=...: only those families (none named: all)
        names = frozenset(request.query_params.getlist("name[]")) or None
        payload, content_type = core.metrics.render(names)
        return Response(payload, media_type=content_type)

    app = Starlette(routes=[Route("/metrics", metrics, methods=["GET"])],
                    exception_handlers=EXCEPTION_HANDLERS)
    app.router.redirect_slashes = False
    return _wrap(app, core, "metrics", None)
