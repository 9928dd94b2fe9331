"""A handler's values -> response messages, with what the handler set on the batch's Context
(status, headers, content type); and the responses of a batch whose handler failed.

Shared by the three serving modes (worker/service.py, worker/stepping.py, worker/async_loop.py):
each passes the context of the batch it ran, since async mode has one per batch.
"""
from __future__ import annotations

import logging
from typing import Any

from protocol import messages
from worker import codec
from worker.runtime.context import Context
from worker.runtime.streaming import STREAM_NEXT

logger = logging.getLogger(__name__)


class _NoPart:
    """The value of a continuous-batching step for a request that goes on with nothing to
    say yet (torchd's own; a TorchServe handler sends a part every step)."""

    def __repr__(self) -> str:
        return "NO_PART"


NO_PART = _NoPart()


def encode_one(context: Context, idx: int, request_id: str, value: Any,
               code: int | None = None, message: str | None = None,
               more: bool = False) -> dict[str, Any]:
    """One request's response. ``code``/``message``: a streamed part's own status; ``more``:
    a step's part whose request stays in the running batch."""
    status, phrase = context.get_response_status(idx)
    if code is not None:
        status, phrase = int(code), message or ""
    headers = context.get_response_headers(idx)
    # TorchServe's "more parts follow" header: torchd's frames say so themselves, and a client
    # must never see it (a handler written for TorchServe may set it by hand).
    headers.pop(STREAM_NEXT, None)
    content_type = context.get_response_content_type(idx)
    for name in [n for n in headers if n.lower() == "content-type"]:
        content_type = content_type or headers[name]
        del headers[name]
    return messages.response(request_id, status, phrase or codec.default_reason(status),
                             codec.encode_body(value), content_type,
                             [[k, v] for k, v in headers.items()], more=more)


def output_failure(output: Any, count: int) -> tuple[int, str] | None:
    """Why ``output`` cannot answer a batch of ``count`` requests (logged), or None."""
    if not isinstance(output, list):
        logger.error("handler returned %s, not a list", type(output).__name__)
        return codec.INVALID_OUTPUT
    if len(output) != count:
        logger.error("handler returned %d results for %d requests", len(output), count)
        return codec.BATCH_MISMATCH
    return None


def encode_output(context: Context, output: Any, ids: list[str]) -> list[dict[str, Any]]:
    """One response per request, or errors for all when the output does not fit the batch."""
    failure = output_failure(output, len(ids))
    if failure is not None:
        return failed(ids, failure)
    return [encode_one(context, idx, ids[idx], value) for idx, value in enumerate(output)]


def encode_parts(context: Context, ret: Any, id_map: dict[int, str], message: str,
                 code: int) -> list[dict[str, Any]]:
    """The parts of one send_intermediate_predict_response call."""
    return [encode_one(context, idx, request_id, ret[idx], code, message)
            for idx, request_id in id_map.items()]


def failed(ids: list[str], failure: tuple[int, str]) -> list[dict[str, Any]]:
    status, reason = failure
    return [messages.response(i, status, reason, b"", error=True) for i in ids]


def handler_failed(exc: BaseException, ids: list[str]) -> list[dict[str, Any]]:
    """Every request's error response when the handler raised ``exc`` (logged)."""
    status, reason = codec.failure_status(exc)
    # A PredictionException is the handler answering on purpose; the rest are bugs.
    chosen = type(exc).__name__ == "PredictionException"
    level = logging.WARNING if chosen else logging.ERROR
    logger.log(level, "handler failed (%s %s)", status, reason, exc_info=exc)
    return failed(ids, (status, reason))
