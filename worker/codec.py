"""Request values in, response bodies out, and handler failures as statuses (SPEC section 2)."""
from __future__ import annotations

import json
import logging
from http import HTTPStatus
from json.encoder import encode_basestring_ascii
from typing import Any

from protocol import messages

logger = logging.getLogger(__name__)

OUT_OF_RESOURCES = (507, "Out of resources")
OUT_OF_GPU_MEMORY = (507, "Out of resources: CUDA out of memory on the worker's GPU")
# What torch's CUDA allocator and cuBLAS say when the GPU's memory runs out (torch raises
# torch.cuda.OutOfMemoryError today, a RuntimeError in older releases and in some kernels).
CUDA_OOM_TEXTS = ("CUDA out of memory", "CUDA error: out of memory", "CUBLAS_STATUS_ALLOC_FAILED")
PREDICTION_FAILED = (503, "Prediction failed")
INVALID_OUTPUT = (503, "Invalid model predict output")
BATCH_MISMATCH = (503, "number of batch response mismatched")


def media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


class RefusedRequest(Exception):
    """A request the worker cannot hand to its handler, by the client's fault: answered 400
    (BadRequestException) on its own, and the rest of its batch runs without it."""


def decode_value(content_type: str | None, value: bytes) -> Any:
    """JSON for application/json (bytes kept if it is not JSON, as TorchServe does), str for
    text/*, else bytes. JSON nested deeper than the interpreter's recursion limit allows (about
    a thousand levels) is RefusedRequest: no handler could take it, and it is not the
    handler's failure.

    Raw values are bytearray, as TorchServe hands them to handlers.
    """
    kind = media_type(content_type)
    if kind == "application/json":
        try:
            return json.loads(value)
        except RecursionError:
            raise RefusedRequest("The JSON body is nested too deeply") from None
        except (ValueError, UnicodeDecodeError):
            logger.debug("a parameter declared JSON is not JSON; passing it on as bytes")
    elif kind.startswith("text/"):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            logger.debug("a text parameter is not UTF-8; passing it on as bytes")
    return bytearray(value)


def decode_request(request: dict[str, Any]) -> dict[str, Any]:
    """One request's parameters as the {name: value} dict a handler receives."""
    return {p["name"]: decode_value(p.get("content_type"), p["value"])
            for p in request.get("parameters", [])}


def decode_batch(requests: list[dict[str, Any]],
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(the requests the handler gets, their parameters as it gets them, an error response for
    each request refused). The handler never sees a refused request, so its batch shrinks."""
    kept, data, refused = [], [], []
    for request in requests:
        try:
            data.append(decode_request(request))
        except RefusedRequest as exc:
            logger.info("request %s refused: %s", request.get("id"), exc)
            refused.append(refusal(request["id"], exc))
        else:
            kept.append(request)
    return kept, data, refused


def refusal(request_id: str, exc: RefusedRequest) -> dict[str, Any]:
    return messages.response(request_id, 400, str(exc), b"", error=True,
                             error_type=messages.BAD_REQUEST)


def request_headers(request: dict[str, Any]) -> dict[str, str]:
    return {str(name): str(value) for name, value in request.get("headers", [])}


def encode_body(value: Any) -> bytes:
    """bytes as is, str as UTF-8, anything else as indented JSON."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return indented_json(value).encode("utf-8")


class _NotPlain(Exception):
    """The value holds something the fast path does not spell: json.dumps must."""


# Deeper values (or a container that holds itself) go to json.dumps, which also reports cycles.
_MAX_FAST_DEPTH = 32
_SCALARS: dict[Any, str] = {True: "true", False: "false", None: "null"}


def indented_json(value: Any) -> str:
    """Exactly ``json.dumps(value, indent=2)``, faster for plain data.

    With an indent, json.dumps falls back to its pure-Python encoder (a generator per
    container), the largest per-request cost of a small handler's response. Plain values
    (dict with str keys, list, tuple, str, int, float, bool, None; exact types, not subclasses)
    are spelled here with the same C string escaper; anything else takes json.dumps' path.
    """
    try:
        return _plain(value, 0)
    except _NotPlain:
        return json.dumps(value, indent=2)


def _plain(value: Any, depth: int) -> str:
    kind = type(value)
    if kind is str:
        return encode_basestring_ascii(value)
    if kind is int:
        return int.__repr__(value)
    if kind is float:
        return _float(value)
    if kind is dict:
        return _plain_dict(value, depth + 1) if value else "{}"
    if kind is list or kind is tuple:
        return _plain_list(value, depth + 1) if value else "[]"
    if kind is bool or value is None:
        return _SCALARS[value]
    raise _NotPlain


def _plain_dict(value: dict[Any, Any], depth: int) -> str:
    if depth > _MAX_FAST_DEPTH:
        raise _NotPlain
    inner = "\n" + "  " * depth
    items = []
    for key, item in value.items():
        if type(key) is not str:  # json.dumps turns int, float, bool and None keys to text
            raise _NotPlain
        items.append(encode_basestring_ascii(key) + ": " + _plain(item, depth))
    return "{" + inner + ("," + inner).join(items) + "\n" + "  " * (depth - 1) + "}"


def _plain_list(value: list[Any] | tuple[Any, ...], depth: int) -> str:
    if depth > _MAX_FAST_DEPTH:
        raise _NotPlain
    inner = "\n" + "  " * depth
    items = [_plain(item, depth) for item in value]
    return "[" + inner + ("," + inner).join(items) + "\n" + "  " * (depth - 1) + "]"


_INFINITY = float("inf")


def _float(value: float) -> str:
    """json's spelling: NaN and the infinities by name, every other float by its repr."""
    if value != value:
        return "NaN"
    if value == _INFINITY:
        return "Infinity"
    if value == -_INFINITY:
        return "-Infinity"
    return float.__repr__(value)


def _status_phrases() -> dict[int, str]:
    return {status.value: status.phrase for status in HTTPStatus}


# Looked up per response: a dict is cheaper than constructing the enum member each time.
_PHRASES = _status_phrases()


def default_reason(status: int) -> str:
    return _PHRASES.get(status, "")


def failure_status(exc: BaseException) -> tuple[int, str]:
    """The status and message every request of a batch gets when its handler raised ``exc``."""
    code = getattr(exc, "error_code", None)
    # Matched by shape, not class, so a real TorchServe PredictionException works as well.
    if type(exc).__name__ == "PredictionException" and isinstance(code, int):
        return code, str(getattr(exc, "message", exc))
    if is_cuda_oom(exc):
        return OUT_OF_GPU_MEMORY
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return OUT_OF_RESOURCES
    return PREDICTION_FAILED


def is_cuda_oom(exc: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError, or an error whose text says CUDA ran out of memory. Matched
    by name and text: the worker never imports torch.cuda for this."""
    if type(exc).__name__ == "OutOfMemoryError" and type(exc).__module__.startswith("torch"):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(t in text for t in CUDA_OOM_TEXTS)
