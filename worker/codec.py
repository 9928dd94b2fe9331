"""Request values in, response bodies out, and handler failures as statuses (SPEC section 2)."""
from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

logger = logging.getLogger(__name__)

OUT_OF_RESOURCES = (507, "Out of resources")
PREDICTION_FAILED = (503, "Prediction failed")
INVALID_OUTPUT = (503, "Invalid model predict output")
BATCH_MISMATCH = (503, "number of batch response mismatched")


def media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def decode_value(content_type: str | None, value: bytes) -> Any:
    """JSON for application/json (bytes kept if it is not JSON), str for text/*, else bytes.

    Raw values are bytearray, as TorchServe hands them to handlers.
    """
    kind = media_type(content_type)
    if kind == "application/json":
        try:
            return json.loads(value)
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


def request_headers(request: dict[str, Any]) -> dict[str, str]:
    return {str(name): str(value) for name, value in request.get("headers", [])}


def encode_body(value: Any) -> bytes:
    """bytes as is, str as UTF-8, anything else as indented JSON."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, indent=2).encode("utf-8")


def default_reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def failure_status(exc: BaseException) -> tuple[int, str]:
    """The status and message every request of a batch gets when its handler raised ``exc``."""
    code = getattr(exc, "error_code", None)
    # Matched by shape, not class, so a real TorchServe PredictionException works as well.
    if type(exc).__name__ == "PredictionException" and isinstance(code, int):
        return code, str(getattr(exc, "message", exc))
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return OUT_OF_RESOURCES
    return PREDICTION_FAILED
