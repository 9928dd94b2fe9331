"""The hot path: one prediction request through its model's queue to a worker and back.

Every inference request takes this path, so it is plain ASGI: the prediction routes are ASGI
endpoints, and `HotRoutes` (hot_routes.py) hands a request that matches one of them straight
to it, past starlette's middleware and router (which still serve every other path, and answer
405 for these paths with a wrong method). Profiled under load, that stack took about a tenth of the
daemon's time per request.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from daemon.errors import BadRequest, ResourceNotFound, StreamCutOff, TorchdError
from daemon.http.answers import response_headers
from daemon.http.common import (DISCONNECT_HOOKS, JSONAnswer, NoResponse, error_response, header,
                                 receive_body)
from daemon.models.call import PredictionCall, Predictions
from daemon.models.job import Answer, Failure, Gone, Part
from protocol import messages

logger = logging.getLogger(__name__)
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
EXPLAIN = (("explain", "True"),)
NO_EXPLAIN = (("explain", "False"),)
URL_PATH = "url_path"   # TorchServe's header name for the path after the version, as is
# TorchServe routes any method to /predictions and /explanations (a handler routing on url_path
# may serve GET as well as POST); HEAD is left out: it would run a prediction to send no body.
TORCHSERVE_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
ErrorRenderer = Callable[[TorchdError], Response]
Target = tuple[str, "str | None", tuple]   # model name, version, extra headers for the worker


def v2_error(message: str, status: int) -> Response:
    """OIP v2's error document, which is what v2 clients parse."""
    return JSONAnswer({"error": message}, status_code=status)


def v2_error_of(exc: TorchdError) -> Response:
    return v2_error(exc.message, exc.status)


# ---- request → call -------------------------------------------------------------------------

async def form_parameters(scope: dict[str, Any], body: bytes,
                          limit: int) -> list[dict[str, Any]]:
    """One parameter per field of a multipart or urlencoded body (starlette's parser); a body
    it refuses is the client's 400."""
    async def replay() -> dict[str, Any]:   # the body, read already, as the parser asks for it
        return {"type": "http.request", "body": body, "more_body": False}

    request = Request(scope, replay)
    try:
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
    except MultiPartException as exc:
        message = exc.message
        if not _is_multipart(header(scope, b"content-type")):
            # curl's -d and --data-binary send urlencoded: an image or a tensor sent that way is
            # read as form fields (TorchServe does the same), and random bytes make thousands
            message += (f" The body was read as {FORM_TYPES[1]} form fields, the content type "
                        "curl's -d and --data-binary send: send other data with -T, or with "
                        "-H 'Content-Type: application/octet-stream'.")
        raise BadRequest(message) from None


def is_form(content_type: str | None) -> bool:
    """A multipart or urlencoded body: one parameter per field (starlette's parser)."""
    return _media_type(content_type) in FORM_TYPES


def _is_multipart(content_type: str | None) -> bool:
    return _media_type(content_type) == FORM_TYPES[0]


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def request_headers(scope: dict[str, Any], extra_headers: tuple) -> list[list[str]]:
    """The request's headers as the worker sees them, and the endpoint's extra ones, which win:
    a request header of the same name is left out (TorchServe adds its own after the client's,
    and keeps the last). Header names in the scope are lower case, as the extra ones are."""
    if not extra_headers:
        return [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]
    own = {name.encode("latin-1") for name, _ in extra_headers}
    headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]
               if k not in own]
    headers.extend([list(h) for h in extra_headers])
    return headers


# ---- events → response ----------------------------------------------------------------------

def render(answer: Answer, render_error: ErrorRenderer, default_type: str | None) -> Response:
    response = answer.response
    try:
        headers = response_headers(response, default_type)
    except TorchdError as exc:
        return render_error(exc)
    return Response(response["body"], status_code=response.get("status") or 200,
                    headers=headers)


class PartsResponse(StreamingResponse):
    """The handler's parts as the chunks of one chunked response; its return value is the last.

    A failure after the first part ends the response without its closing empty chunk: the status
    line has gone already, so the client must see a broken body rather than a complete one.
    (Returning without the final body message makes uvicorn close the connection.) uvicorn's
    ``send`` waits while the client is not reading, and the call holds the worker's parts
    meanwhile, or, where that would stall other requests, keeps them up to
    ``max_stream_buffer_size`` and then cuts the stream off (daemon/models/job.py).
    """

    def __init__(self, first: Part, call: PredictionCall, default_type: str | None) -> None:
        self.first, self.call = first.response, call
        self.status_code = first.status
        self.background = None
        self.init_headers(response_headers(self.first, default_type))   # may raise: nothing sent

    async def stream_response(self, send: Any) -> None:
        try:
            await self._stream(send)
        finally:
            # however it ended (the client gone: ``send`` raises, or the task is cancelled),
            # a request still running leaves its worker's batch, and holds it no longer
            self.call.hang_up()

    async def _stream(self, send: Any) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.first["body"], "more_body": True})
        while True:
            event = await self.call.next_event()
            if isinstance(event, Gone):
                return
            if isinstance(event, Failure):
                if not isinstance(event.error, StreamCutOff):   # the job logged that one
                    logger.error("request %s failed after its stream began: %s", self.call.id,
                                 event.error.message)
                return
            await send({"type": "http.response.body", "body": event.response["body"],
                        "more_body": not event.final})
            if event.final:
                return


# ---- the pipeline ---------------------------------------------------------------------------

class Predictor:
    """Runs prediction requests for one inference listener."""

    def __init__(self, predictions: Predictions, limit: int) -> None:
        self.predictions = predictions
        self.limit = limit

    async def run(self, scope: dict[str, Any], receive: Callable, send: Callable,
                  endpoint: PredictionEndpoint, target: Target) -> None:
        """Answer one request for ``endpoint`` (``target``: what its path names); errors are
        rendered by the endpoint (TorchServe's JSON, OIP v2's on /v2 paths, OpenAI's on its
        routes)."""
        try:
            response = await self._respond(scope, receive, endpoint, target)
        except ClientDisconnect:
            return
        except TorchdError as exc:
            response = endpoint.render_error(exc)
        except Exception as exc:
            logger.exception("unhandled error on %s %s", scope["method"], scope["path"])
            response = endpoint.render_error(TorchdError(f"{type(exc).__name__}: {exc}"))
        await response(scope, receive, send)

    async def _respond(self, scope: dict[str, Any], receive: Callable,
                       endpoint: PredictionEndpoint, target: Target) -> Response:
        body = await receive_body(scope, receive, self.limit)
        params = await self._parameters(scope, body, endpoint.body_type)
        name, version, extra_headers = endpoint.resolve(target, body, params)
        call = self.predictions.start(name, version, request_headers(scope, extra_headers),
                                      params, request_id=scope["state"]["request_id"])
        event = await self._first_event(scope, call)
        if isinstance(event, Gone):
            return NoResponse()
        if isinstance(event, Failure):
            return endpoint.render_error(event.error)
        if isinstance(event, Answer):
            return render(event, endpoint.render_error, endpoint.default_type)
        return PartsResponse(event, call, endpoint.default_type)

    async def _parameters(self, scope: dict[str, Any], body: bytes,
                          body_type: str | None) -> list[dict]:
        """The body as the worker gets it: one ``body`` parameter of ``body_type`` when the
        endpoint names one, else of the request's type, or a form's fields one each."""
        if body_type is not None:
            return [messages.parameter("body", body_type, body)]
        content_type = header(scope, b"content-type")
        if is_form(content_type):
            return await form_parameters(scope, body, self.limit)
        return [messages.parameter("body", content_type, body)]

    @staticmethod
    async def _first_event(scope: dict[str, Any], call: PredictionCall) -> Any:
        """The call's first event; a client that hangs up before dispatch is dropped from the
        queue, never run (the listener calls the hook when the connection is lost)."""
        hooks = scope[DISCONNECT_HOOKS]
        hooks.append(call.hang_up)
        try:
            return await call.next_event()
        finally:
            hooks.remove(call.hang_up)


# ---- endpoints ------------------------------------------------------------------------------

class PredictionEndpoint:
    """ASGI endpoint of a prediction route (TorchServe's own are ``TorchServeEndpoint``).

    Every prediction endpoint says the same things: which model version a request names
    (``target`` from its path; ``resolve`` once its whole body is in), what the worker sees
    besides the request's own headers, the body's content type for the worker, how errors are
    rendered, and the default content type. The ASGI call and the listener's direct path
    (daemon/http/direct.py) both read them here."""

    render_error: ErrorRenderer = staticmethod(error_response)
    default_type: str | None = None
    # The content type the worker sees for the body, whatever the request said (a form body is
    # then not parsed); None: the request's own, and form fields one parameter each.
    body_type: str | None = None

    def __init__(self, predictor: Predictor, extra_headers: tuple = ()) -> None:
        self.predictor = predictor
        self.extra_headers = extra_headers

    def target(self, scope: dict[str, Any]) -> Target:
        """The model version the request names and the extra headers its worker sees; a
        TorchdError when it names none."""
        p = scope["path_params"]
        return p["model_name"], p.get("model_version"), self.extra_headers

    def resolve(self, target: Target, body: bytes, params: list[dict] | None = None
                ) -> Target:
        """The target once the whole body is in (``params``: the parameters the worker will
        get, when parsed already): ``target`` itself, unless the endpoint's requests may name
        their model in the body (OpenAI's routes, /invocations' form field); a TorchdError
        when the body names none."""
        return target

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        try:
            target = self.target(scope)
        except TorchdError as exc:
            await self.render_error(exc)(scope, receive, send)
            return
        await self.predictor.run(scope, receive, send, self, target)


class TorchServeEndpoint(PredictionEndpoint):
    """/predictions and /explanations, as TorchServe's handlePredictions: the model, its
    version, and any path after the version, which the handler sees as the ``url_path`` header
    (``POST /predictions/llm/1.0/v1/chat/completions``: ``v1/chat/completions``; "" without
    one), beside ``explain: True`` or ``False``.

    ``url_path`` is the rest of the path as the router sees every segment: percent-decoded
    (``a%2Fb%20c`` is ``a/b c``), as TorchServe decodes the path before it splits it; the
    trailing slash is gone, empty segments inside it stay."""

    def target(self, scope: dict[str, Any]) -> Target:
        p = scope["path_params"]
        return (p["model_name"], p.get("model_version"),
                ((URL_PATH, p.get(URL_PATH, "")), *self.extra_headers))


class KServeV1Endpoint(PredictionEndpoint):
    """/v1/models/{name}:predict and :explain."""

    def target(self, scope: dict[str, Any]) -> Target:
        name, _, verb = scope["path_params"]["target"].rpartition(":")
        if not name or verb not in ("predict", "explain"):
            raise ResourceNotFound("Requested resource is not found, please refer to API "
                                   "document.")
        return name, None, EXPLAIN if verb == "explain" else ()


class V2InferEndpoint(PredictionEndpoint):
    """OIP v2 infer: v2's error documents, and JSON unless the handler says otherwise."""

    render_error = staticmethod(v2_error_of)
    default_type = "application/json"


def any_method_route(path: str, endpoint: Any) -> Route:
    """A route TorchServe answers with any method (its predictions and workflow predictions),
    HEAD aside: starlette adds it beside GET."""
    route = Route(path, endpoint, methods=TORCHSERVE_METHODS)
    if route.methods:
        route.methods.discard("HEAD")
    return route


# ``/{verb}/{m}``, ``/{verb}/{m}/{v}`` and ``/{verb}/{m}/{v}/{url_path...}``
TORCHSERVE_TAILS = ("", "/{model_version}", "/{model_version}/{%s:path}" % URL_PATH)


def torchserve_routes(verb: str, endpoint: TorchServeEndpoint) -> list[Route]:
    return [any_method_route(f"/{verb}/{{model_name}}{tail}", endpoint)
            for tail in TORCHSERVE_TAILS]


def prediction_routes(predictor: Predictor) -> list[Route]:
    v2_infer = V2InferEndpoint(predictor)
    return [
        *torchserve_routes("predictions", TorchServeEndpoint(predictor, NO_EXPLAIN)),
        *torchserve_routes("explanations", TorchServeEndpoint(predictor, EXPLAIN)),
        Route("/v1/models/{target}", KServeV1Endpoint(predictor), methods=["POST"]),
        Route("/v2/models/{model_name}/infer", v2_infer, methods=["POST"]),
        Route("/v2/models/{model_name}/versions/{model_version}/infer", v2_infer,
              methods=["POST"]),
    ]
