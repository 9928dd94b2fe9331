"""``json`` envelope (TensorFlow Serving's REST shape): ``{"instances": [...]}`` in, each instance
one handler row (``{"b64": ...}`` values decoded to bytes); ``{"predictions": [...]}`` out, one
JSON text per request."""
from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from worker.ts.torch_handler.request_envelope.base import (
    BaseEnvelope,
    json_document,
    list_field,
    request_value,
    split_by_lengths,
)
from worker.ts.utils.util import PredictionException


class JSONEnvelope(BaseEnvelope):
    def __init__(self, handle_fn: Any) -> None:
        super().__init__(handle_fn)
        self._lengths: list[int] = []

    def parse_input(self, data: list[Any]) -> list[Any]:
        batches = [self._instances(idx, row) for idx, row in enumerate(data)]
        self._lengths = [len(instances) for instances in batches]
        return [instance for instances in batches for instance in instances]

    def _instances(self, idx: int, row: Any) -> list[Any]:
        value = request_value(row)
        document = json_document(idx, value if value else row, "json")
        return [_decode_b64(idx, instance) for instance in
                list_field(idx, document, ("instances",), "json")]

    def format_output(self, data: list[Any]) -> list[Any]:
        return [json.dumps({"predictions": chunk})
                for chunk in split_by_lengths(data, self._lengths)]


def _decode_b64(idx: int, instance: Any) -> Any:
    """``{"b64": text}`` -> bytes, for the instance itself or any of its columns."""
    if not isinstance(instance, dict):
        return instance
    if _is_b64(instance):
        return _b64_bytes(idx, instance["b64"])
    return {key: _b64_bytes(idx, value["b64"]) if _is_b64(value) else value
            for key, value in instance.items()}


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and list(value) == ["b64"]


def _b64_bytes(idx: int, text: Any) -> bytes:
    try:
        return base64.b64decode(text)
    except (binascii.Error, TypeError, ValueError) as exc:
        raise PredictionException(f"json envelope: a \"b64\" value of request {idx} is not "
                                  f"base64", 400) from exc
