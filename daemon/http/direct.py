"""The inference listener's direct path: a prediction request served from the listener's own
callbacks, with no ASGI task, no receive/send messages and no starlette Response.

Profiled under load (py-spy), the ASGI layers around a no-op prediction (uvicorn's task and
``send``, the middleware's send wrapper, starlette's Response, the coroutines between them) held
about a third of the daemon's samples. A request taken here is still parsed by httptools in
uvicorn's protocol, whose server still owns the connections, keep-alive, pipelining and the
drain at shutdown. Then its body is read from uvicorn's request cycle as the parser fills it,
its job is queued on the body's last byte, and the job's listener writes the whole response,
head and body, in one write the moment the worker answers.

It runs the ASGI path's own pieces: the endpoint's ``target``, ``submit_job``,
``record_outcome``, the middleware's authorization and its ``finish`` (status count, access
log), ``response_headers`` and the endpoint's error renderer. A request it does not take goes
the ASGI way: a form body (starlette's parser), ``Expect: 100-continue``, a path that is not a
prediction route. With CORS on (the middleware adds headers), there is no direct path at all.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from starlette.responses import Response
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from daemon.errors import TorchdError
from daemon.http.common import (RequestContext, declared_too_large, error_response, header,
                                new_request_id, normalized_path, too_large)
from daemon.http.predict import (HotRoutes, PredictionEndpoint, Predictor, is_form, new_job,
                                 outcome_status, response_headers, worker_error)
from daemon.models.submission import record_outcome, submit_job
from protocol import messages

logger = logging.getLogger(__name__)

# A DirectRequest's states
RECEIVING = 0    # the body is arriving
REFUSED = 1      # an error answer is on its way; the rest of the body is ignored
QUEUED = 2       # its job is queued or in a worker
STREAMING = 3    # the handler's parts are going out as chunks
DONE = 4


class DirectPath:
    """What the direct path needs of one inference app; the listener asks it to ``take``
    each request as its head is parsed."""

    def __init__(self, predictor: Predictor, routes: HotRoutes, context: RequestContext) -> None:
        self.predictor = predictor
        self.routes = routes
        self.context = context

    def take(self, protocol: Any, cycle: Any) -> bool:
        """Serve ``cycle``'s request here; False leaves it to the ASGI app."""
        if cycle.waiting_for_100_continue:   # the ASGI path sends the 100 when asked for the body
            return False
        scope = cycle.scope
        path = normalized_path(scope["path"])
        found = self.routes.match(path, scope["method"])
        if found is None or not isinstance(found[0].endpoint, PredictionEndpoint):
            return False
        content_type = header(scope, b"content-type")
        if is_form(content_type):
            return False
        route, scope["path_params"] = found
        scope["path"] = path
        scope["endpoint"] = route.endpoint
        DirectRequest(self, protocol, cycle, route.endpoint, content_type).begin()
        return True


class DirectRequest:
    """One request on the direct path, from its parsed head to its response's last byte.

    It stands in for the cycle's ``message_event``: uvicorn's protocol calls ``set`` on that
    for each part of the body, at the body's end and when the client hangs up. The job calls
    ``on_event`` when its worker answers. Answers that would otherwise be written from inside
    the parser's callbacks (a refusal) wait for the loop's next turn, as an ASGI task's would:
    uvicorn arms the keep-alive timer when a response completes, and inside ``data_received``
    that would be before the next pipelined request is parsed.
    """

    __slots__ = ("path", "protocol", "cycle", "endpoint", "content_type", "started",
                 "request_id", "target", "mv", "job", "state", "status")

    def __init__(self, path: DirectPath, protocol: Any, cycle: Any,
                 endpoint: PredictionEndpoint, content_type: str | None) -> None:
        self.path = path
        self.protocol = protocol
        self.cycle = cycle
        self.endpoint = endpoint
        self.content_type = content_type
        self.started = time.perf_counter()
        self.request_id = new_request_id()
        cycle.scope["state"]["request_id"] = self.request_id
        self.target: Any = None
        self.mv: Any = None
        self.job: Any = None
        self.state = RECEIVING
        self.status = 0

    def begin(self) -> None:
        self.cycle.message_event = self
        scope = self.cycle.scope
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
        self.set()   # a pipelined request's body may be complete already

    # ---- the cycle's message event ----------------------------------------------------------

    def set(self) -> None:
        try:
            self._body_or_hangup()
        except Exception:
            logger.exception("request %s: taking its body failed", self.request_id)
            self._abort()

    def _body_or_hangup(self) -> None:
        cycle = self.cycle
        if self.state == RECEIVING:
            if cycle.disconnected:   # gone before its body was complete: nothing was queued
                self._done()
            elif not cycle.more_body:
                self._submit(bytes(cycle.body))
            elif len(cycle.body) > self.path.predictor.limit:
                self._refuse(too_large(self.path.predictor.limit))
            else:   # uvicorn pauses reading past 64 KiB; the body is held here up to the limit
                self.protocol.flow.resume_reading()
        elif self.state == QUEUED and cycle.disconnected:
            self.mv.queue.abandon(self.job)   # never dispatched if it has not been; "gone"

    def clear(self) -> None:
        """uvicorn clears the event only in ``receive``, which nothing calls here."""

    def _submit(self, body: bytes) -> None:
        predictor = self.path.predictor
        name, version, extra = self.target
        try:
            mv = predictor.registry.get(name, version)
            job = new_job(self.cycle.scope, [messages.parameter("body", self.content_type, body)],
                          extra)
            submit_job(predictor.supervisor, predictor.metrics, mv, job, version is not None)
        except TorchdError as exc:
            self._refuse(exc)
            return
        except Exception as exc:   # a bug: answered as the ASGI path answers one
            logger.exception("unhandled error on %s %s", self.cycle.scope["method"],
                             self.cycle.scope["path"])
            self._refuse(TorchdError(f"{type(exc).__name__}: {exc}"))
            return
        self.mv, self.job, self.state = mv, job, QUEUED
        job.listen(self.on_event)

    def _refuse(self, exc: TorchdError, use_endpoint_errors: bool = True) -> None:
        self.state = REFUSED
        render = self.endpoint.render_error if use_endpoint_errors else error_response
        self.protocol.loop.call_soon(self._send_rendered, render(exc))

    # ---- the job's events -------------------------------------------------------------------

    def on_event(self, kind: str, payload: Any) -> None:
        try:
            if self.state == QUEUED:
                self._first_event(kind, payload)
            elif self.state == STREAMING:
                self._next_part(kind, payload)
        except Exception:
            logger.exception("request %s: writing its response failed", self.request_id)
            self._abort()

    def _first_event(self, kind: str, payload: Any) -> None:
        record_outcome(self.path.predictor.metrics, self.mv, self.job,
                       outcome_status(kind, payload), self.target[1] is not None)
        if kind == "gone":
            self._done()
        elif kind == "error":
            self._send_rendered(self.endpoint.render_error(payload))
        elif payload.get("error"):
            self._send_rendered(self.endpoint.render_error(worker_error(payload)))
        else:
            try:
                headers = self._headers(payload)
            except TorchdError as exc:   # nothing has been written yet
                self._send_rendered(self.endpoint.render_error(exc))
                return
            if kind == "part":
                self._start_parts(payload, headers)
            else:
                self._send_final(payload, headers)

    def _send_final(self, response: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
        status = response.get("status") or 200
        body = _bytes(response["body"])
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
        if not self.cycle.disconnected:
            self.cycle.response_started = True
            self.protocol.transport.write(self._head(status, headers) + _chunk(first["body"]))

    def _next_part(self, kind: str, payload: Any) -> None:
        if kind in ("gone", "error") or payload.get("error"):
            if kind != "gone":
                message = payload.message if kind == "error" else payload.get("reason")
                logger.error("request %s failed after its stream began: %s", self.request_id,
                             message)
            # no closing chunk: the client must see a broken body, not a complete one
            self.protocol.transport.close()
            self._done()
            return
        last = kind == "final"
        if not self.cycle.disconnected:
            self.protocol.transport.write(_chunk(payload["body"]) + (b"0\r\n\r\n" if last else b""))
        if last:
            self._complete()

    # ---- writing ----------------------------------------------------------------------------

    def _headers(self, response: dict[str, Any]) -> list[tuple[bytes, bytes]]:
        headers = response_headers(response, self.endpoint.default_type)   # may raise (500)
        return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    def _send_rendered(self, response: Response) -> None:
        if self.state != DONE:
            self._send(response.status_code, response.raw_headers, response.body)

    def _send(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        if self.cycle.disconnected:
            self._done()
            return
        self.cycle.response_started = True
        self.protocol.transport.write(self._head(status, headers) + body)
        self._complete()

    def _head(self, status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
        """Status line and headers as uvicorn writes them, with x-request-id."""
        cycle = self.cycle
        out = [STATUS_LINE[status]]
        close_given = False
        for name, value in (*self.protocol.server_state.default_headers, *headers):
            if name == b"connection" and b"close" in value.lower():
                cycle.keep_alive, close_given = False, True
            out += (name, b": ", value, b"\r\n")
        out += (b"x-request-id: ", self.request_id.encode(), b"\r\n")
        if not cycle.keep_alive and not close_given:   # asked by the client, or shutting down
            out.append(b"connection: close\r\n")
        out.append(b"\r\n")
        return b"".join(out)

    def _complete(self) -> None:
        """The response is out: the connection goes on to its next request, or closes."""
        cycle = self.cycle
        self._done()
        if cycle.disconnected:
            return
        cycle.response_complete = True
        if not cycle.keep_alive:
            self.protocol.transport.close()
        cycle.on_response()

    def _done(self) -> None:
        if self.state != DONE:
            self.state = DONE
            self.path.context.finish(self.cycle.scope, self.status, self.started,
                                     self.request_id)
            # The cycle and the job point back here: left alone, every request would be a
            # reference cycle (with its scope, job and result) for the cyclic collector.
            self.cycle.message_event = SPENT
            self.job = self.mv = None

    def _abort(self) -> None:
        """Something here failed: the client sees the connection close rather than wait."""
        self.protocol.transport.close()
        self._done()


class _SpentEvent:
    """A finished request's message event: what uvicorn still tells it (a hang-up after the
    response, say) concerns nobody."""

    __slots__ = ()

    def set(self) -> None:
        pass

    def clear(self) -> None:
        pass


SPENT = _SpentEvent()


def _bytes(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return bytes(body) if body is not None else b""


def _chunk(body: Any) -> bytes:
    body = _bytes(body)
    return b"%x\r\n%s\r\n" % (len(body), body) if body else b""
