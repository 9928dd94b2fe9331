"""TorchServe's HTTP statuses as gRPC status codes, and answering a call with an error."""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import grpc

from daemon.errors import TorchdError

logger = logging.getLogger(__name__)
T = TypeVar("T")
C = grpc.StatusCode
# TorchServe's mapping; 405 (the model API is off) is its PERMISSION_DENIED as well, and 507
# (out of resources) its RESOURCE_EXHAUSTED.
HTTP_TO_GRPC = {400: C.INVALID_ARGUMENT, 401: C.UNAUTHENTICATED, 403: C.PERMISSION_DENIED,
                404: C.NOT_FOUND, 405: C.PERMISSION_DENIED, 409: C.ABORTED,
                413: C.RESOURCE_EXHAUSTED, 429: C.RESOURCE_EXHAUSTED, 501: C.UNIMPLEMENTED,
                503: C.UNAVAILABLE, 504: C.DEADLINE_EXCEEDED, 507: C.RESOURCE_EXHAUSTED}


# Bytes of an error message a call's status carries. grpc-message travels in the trailers,
# percent-encoded (a byte may take 3 characters), and a client refuses trailers past 8-16 KiB:
# an echoed 100,000-character model name would lose the whole status, code included.
MAX_DETAILS = 1000


def details(message: str) -> str:
    """``message`` cut to MAX_DETAILS bytes of UTF-8, saying so."""
    encoded = message.encode("utf-8")
    if len(encoded) <= MAX_DETAILS:
        return message
    cut = encoded[:MAX_DETAILS].decode("utf-8", "ignore")
    return f"{cut}... ({len(encoded) - len(cut.encode())} more bytes)"


def grpc_code(status: int) -> grpc.StatusCode:
    """Any other 4xx is INVALID_ARGUMENT, any other 5xx INTERNAL."""
    code = HTTP_TO_GRPC.get(status)
    if code is not None:
        return code
    return C.INVALID_ARGUMENT if 400 <= status < 500 else C.INTERNAL


async def abort(context: grpc.aio.ServicerContext, error: TorchdError,
                text: str | None = None) -> NoReturn:
    """End the call with ``error``'s mapped code and ``text`` as the details (default: its
    REST message, cut to MAX_DETAILS); the headers REST would send with it (a full queue's
    Retry-After) as trailing metadata."""
    trailers = tuple((name.lower(), value) for name, value in error.headers.items())
    await context.abort(grpc_code(error.status),
                        details(error.message) if text is None else text, trailers)
    raise AssertionError("unreachable: abort raises")   # for type checkers


async def answer(context: grpc.aio.ServicerContext, call: Awaitable[T],
                 describe: Callable[[TorchdError], str] | None = None) -> T:
    """``call``'s result; a TorchdError (or a bug) ends the call with its status instead, and
    ``describe(error)`` as the status details (default: the REST message)."""
    try:
        return await call
    except TorchdError as exc:
        await abort(context, exc, describe(exc) if describe else None)
    except (grpc.aio.AbortError, GeneratorExit):
        raise
    except Exception as exc:
        logger.exception("unhandled error in a gRPC call")
        error = TorchdError(f"{type(exc).__name__}: {exc}")
        await abort(context, error, describe(error) if describe else None)
