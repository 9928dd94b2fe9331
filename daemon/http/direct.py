"""The inference listener's direct path: a prediction request served from the listener's own
callbacks, with no ASGI task, no receive/send messages and no starlette Response.

Profiled under load (py-spy), the ASGI layers around a no-op prediction (uvicorn's task and
``send``, the middleware's send wrapper, starlette's Response, the coroutines between them) held
about a third of the daemon's samples. A request taken here is still parsed by the listener's
protocol, which still owns the connections, keep-alive, pipelining and the drain at shutdown
(daemon/http/uvicorn_adapter.py, the only module that knows it is uvicorn's). This module sees
one ``Exchange``: its body arrives as the parser fills it, the prediction call starts on the
body's last byte, and the call's listener writes the whole response, head and body, in one
write the moment the worker answers; a streamed answer's parts go out as chunks, and while the
client is not reading them the call holds the worker's parts back.

It runs the ASGI path's own pieces: the endpoint's ``target`` and ``resolve``, the prediction
call, the middleware's authorization and its ``finish`` (status count, access log),
``response_headers`` and the endpoint's error renderer. A request it does not take goes the
ASGI way: a form body for an endpoint that parses forms (starlette's parser),
``Expect: 100-continue``, a path that is not a prediction route. With CORS on (the middleware
adds headers), there is no direct path at all.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from starlette.responses import Response

from daemon.errors import StreamCutOff, TorchdError
from daemon.http.answers import LAST_CHUNK, STATUS_LINE, body_bytes, chunk, response_headers
from daemon.http.common import (RequestContext, declared_too_large, error_response, header,
                                normalized_path, too_large)
from daemon.http.hot_routes import HotRoutes
from daemon.http.predict import PredictionEndpoint, Predictor, is_form, \
    request_headers
from daemon.http.uvicorn_exchange import Exchange
from daemon.models.call import PredictionCall, new_request_id
from daemon.models.job import Answer, Event, Failure, Gone
from protocol import messages

logger = logging.getLogger(__name__)

# A DirectRequest's states
RECEIVING = 0    # the body is arriving
REFUSED = 1      # an error answer is on its way; the rest of the body is ignored
QUEUED = 2       # its call is queued or in a worker
STREAMING = 3    # the handler's parts are going out as chunks
DONE = 4


class DirectPath:
    """What the direct path needs of one inference app; the listener asks it to ``take``
    each request as its head is parsed."""

    def __init__(self, predictor: Predictor, routes: HotRoutes, context: RequestContext) -> None:
        self.predictor = predictor
        self.routes = routes
        self.context = context

    def take(self, exchange: Exchange) -> bool:
        """Serve ``exchange``'s request here; False leaves it to the ASGI app."""
        if exchange.expects_continue:   # the ASGI path sends the 100 when asked for the body
            return False
        scope = exchange.scope
        path = normalized_path(scope["path"])
        # the ASGI path's own routes and path parameters (url_path's ``{...:path}`` included)
        found = self.routes.match(path, scope["method"])
        endpoint = None if found is None else found[0].endpoint
        if found is None or not isinstance(endpoint, PredictionEndpoint):
            return False
        content_type = endpoint.body_type or header(scope, b"content-type")
        if endpoint.body_type is None and is_form(content_type):
            return False
        scope["path_params"] = found[1]
        scope["path"] = path
        scope["endpoint"] = endpoint
        DirectRequest(self, exchange, endpoint, content_type).begin()
        return True


class DirectRequest:
    """One request on the direct path, from its parsed head to its response's last byte.

    Answers that would otherwise be written from inside the parser's callbacks (a refusal) wait
    for the loop's next turn, as an ASGI task's would: the listener arms the keep-alive timer
    when a response completes, and inside ``data_received`` that would be before the next
    pipelined request is parsed.
    """

    __slots__ = ("path", "exchange", "endpoint", "content_type", "started", "request_id",
                 "target", "call", "state", "status")

    def __init__(self, path: DirectPath, exchange: Exchange, endpoint: PredictionEndpoint,
                 content_type: str | None) -> None:
        self.path = path
        self.exchange = exchange
        self.endpoint = endpoint
        self.content_type = content_type
        self.started = time.perf_counter()
        self.request_id = new_request_id()
        exchange.scope["state"]["request_id"] = self.request_id
        self.target: Any = None
        self.call: PredictionCall | None = None
        self.state = RECEIVING
        self.status = 0

    def begin(self) -> None:
        self.exchange.listen(self)
        scope = self.exchange.scope
        authorize = self.path.context.authorize
        denied = authorize(scope) if authorize is not None else None
        if denied is not None:
            self._refuse(denied, use_endpoint_errors=False)   # the middleware's own answer
            return
        try:
            self.target = self.endpoint.target(scope)
        except TorchdError as exc:
            self._refuse(exc)
            return
        if declared_too_large(scope, self.path.predictor.limit):
            self._refuse(too_large(self.path.predictor.limit))
            return
        self.on_request_event()   # a pipelined request's body may be complete already

    # ---- what the exchange tells ------------------------------------------------------------

    def on_request_event(self) -> None:
        try:
            self._body_or_hangup()
        except Exception:
            logger.exception("request %s: taking its body failed", self.request_id)
            self._abort()

    def _body_or_hangup(self) -> None:
        exchange = self.exchange
        if self.state == RECEIVING:
            if exchange.disconnected:   # gone before its body was complete: nothing was queued
                self._done()
            elif not exchange.more_body:
                self._start_call(bytes(exchange.body))
            elif len(exchange.body) > self.path.predictor.limit:
                self._refuse(too_large(self.path.predictor.limit))
            else:   # the listener pauses reading past 64 KiB; the body is held here to the limit
                exchange.resume_reading()
        elif self.state in (QUEUED, STREAMING) and exchange.disconnected:
            # a waiting call is never dispatched; a running one's parts are no longer held
            self.call.hang_up()   # type: ignore[union-attr]

    def on_writing_paused(self) -> None:
        """The client is not taking what was written: the worker's parts wait at the worker,
        or here, where that would stall others (``_next_part`` bounds them)."""
        if self.state == STREAMING and self.call is not None:
            self.call.pause()

    def on_writing_resumed(self) -> None:
        if self.call is not None:
            self.call.resume()

    def _start_call(self, body: bytes) -> None:
        scope = self.exchange.scope
        try:
            name, version, extra = self.endpoint.resolve(self.target, body)
            call = self.path.predictor.predictions.start(
                name, version, request_headers(scope, extra),
                [messages.parameter("body", self.content_type, body)],
                request_id=self.request_id)
        except TorchdError as exc:
            self._refuse(exc)
            return
        except Exception as exc:   # a bug: answered as the ASGI path answers one
            logger.exception("unhandled error on %s %s", scope["method"], scope["path"])
            self._refuse(TorchdError(f"{type(exc).__name__}: {exc}"))
            return
        self.call, self.state = call, QUEUED
        call.listen(self.on_event)

    def _refuse(self, exc: TorchdError, use_endpoint_errors: bool = True) -> None:
        self.state = REFUSED
        render = self.endpoint.render_error if use_endpoint_errors else error_response
        self.exchange.call_soon(self._send_rendered, render(exc))

    # ---- the call's events ------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        try:
            if self.state == QUEUED:
                self._first_event(event)
            elif self.state == STREAMING:
                self._next_part(event)
        except Exception:
            logger.exception("request %s: writing its response failed", self.request_id)
            self._abort()

    def _first_event(self, event: Event) -> None:
        if isinstance(event, Gone):
            self._done()
            return
        if isinstance(event, Failure):
            self._send_rendered(self.endpoint.render_error(event.error))
            return
        try:
            headers = self._headers(event.response)
        except TorchdError as exc:   # nothing has been written yet
            self._send_rendered(self.endpoint.render_error(exc))
            return
        if isinstance(event, Answer):
            self._send_final(event.response, headers)
        else:
            self._start_parts(event.response, headers)

    def _send_final(self, response: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
        status = response.get("status") or 200
        body = body_bytes(response["body"])
        if status < 200 or status in (204, 304):
            body = b""   # a response of this status has no body, hence no Content-Length
        else:
            headers.append((b"content-length", b"%d" % len(body)))
        self._send(status, headers, body)

    def _start_parts(self, first: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
        status = first.get("status") or 200
        headers.append((b"transfer-encoding", b"chunked"))
        self.state = STREAMING
        self.status = status
        if not self.exchange.disconnected:
            self.exchange.write(self._head(status, headers) + chunk(first["body"]))
            if self.exchange.writing_paused:
                self.on_writing_paused()

    def _next_part(self, event: Event) -> None:
        if isinstance(event, (Gone, Failure)):
            if isinstance(event, Failure) and not isinstance(event.error, StreamCutOff):
                logger.error("request %s failed after its stream began: %s", self.request_id,
                             event.error.message)
            # no closing chunk: the client must see a broken body, not a complete one
            self._abort()
            return
        exchange = self.exchange
        if not exchange.disconnected:
            exchange.write(chunk(event.response["body"]) + (LAST_CHUNK if event.final else b""))
        if event.final:
            self._complete()
        elif exchange.writing_paused and self.call is not None:
            self._bound_backlog(self.call)

    def _bound_backlog(self, call: PredictionCall) -> None:
        """The parts a client is not taking pile up in its connection's buffer when its worker
        serves others too (the call is not paused there): past the limit, the stream ends."""
        limit = call.job.limits.buffer_size
        if not call.job.held and self.exchange.buffered > limit:
            call.cut_off(f"its client fell more than {limit} bytes behind "   # -> _next_part
                         "(max_stream_buffer_size) while its worker serves other requests too")

    # ---- writing ----------------------------------------------------------------------------

    def _headers(self, response: dict[str, Any]) -> list[tuple[bytes, bytes]]:
        headers = response_headers(response, self.endpoint.default_type)   # may raise (500)
        return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    def _send_rendered(self, response: Response) -> None:
        if self.state != DONE:
            self._send(response.status_code, response.raw_headers, bytes(response.body))

    def _send(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        if self.exchange.disconnected:
            self._done()
            return
        self.exchange.write(self._head(status, headers) + body)
        self._complete()

    def _head(self, status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
        """Status line and headers as the listener writes them, with x-request-id."""
        exchange = self.exchange
        out = [STATUS_LINE[status]]
        close_given = False
        for name, value in (*exchange.default_headers, *headers):
            if name == b"connection" and b"close" in value.lower():
                exchange.keep_alive, close_given = False, True
            out += (name, b": ", value, b"\r\n")
        out += (b"x-request-id: ", self.request_id.encode(), b"\r\n")
        if not exchange.keep_alive and not close_given:   # asked by the client, or shutting down
            out.append(b"connection: close\r\n")
        out.append(b"\r\n")
        return b"".join(out)

    def _complete(self) -> None:
        exchange = self.exchange
        self._done()
        exchange.complete()

    def _done(self) -> None:
        if self.state != DONE:
            self.state = DONE
            self.path.context.finish(self.exchange.scope, self.status, self.started,
                                     self.request_id)
            self.exchange.release()
            self.call = None

    def _abort(self) -> None:
        """Something here failed: the client sees the connection close rather than wait."""
        self.exchange.close()
        self._done()
