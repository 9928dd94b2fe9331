"""``BaseEnvelope`` and what the envelopes share: reading a request's document, splitting results.

An envelope wraps a handler's entry point: ``parse_input`` turns the batch of requests into the
rows the handler sees, ``format_output`` turns the handler's results back into one answer per
request. torchd's envelopes keep each request's rows together, so a batch of several requests
gets one answer each (TorchServe's kserve envelopes answer only a batch's first request).
"""
from __future__ import annotations

import inspect
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from worker.ts.utils.util import PredictionException

HandleFn = Callable[[Any, Any], Any]


class BaseEnvelope(ABC):
    """Wraps ``handle_fn``; its ``handle(data, context)`` is the entry point the worker calls."""

    def __init__(self, handle_fn: HandleFn) -> None:
        self._handle_fn = handle_fn
        self.context: Any = None

    def handle(self, data: Any, context: Any) -> Any:
        self.context = context
        if data:
            data = self.parse_input(data)
        results = self._handle_fn(data, context)
        if inspect.isawaitable(results):   # an async handler: formatted once it has answered
            return self._format_later(results)
        if results:
            results = self.format_output(results)
        return results

    async def _format_later(self, pending: Any) -> Any:
        results = await pending
        return self.format_output(results) if results else results

    @abstractmethod
    def parse_input(self, data: list[Any]) -> list[Any]: ...

    @abstractmethod
    def format_output(self, data: list[Any]) -> list[Any]: ...


def request_value(row: Any) -> Any:
    """A request's input: its "data" or "body" parameter (a bare value as it is)."""
    return (row.get("data") or row.get("body")) if isinstance(row, dict) else row


def json_document(idx: int, value: Any, envelope: str) -> dict[str, Any]:
    """A request's JSON object, decoded if it is still bytes or text; else a 400."""
    if isinstance(value, (bytes, bytearray, str)):
        try:
            value = json.loads(value)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PredictionException(f"{envelope} envelope: request {idx} is not JSON", 400) \
                from exc
    if not isinstance(value, dict):
        raise PredictionException(f"{envelope} envelope: request {idx} is not a JSON object", 400)
    return value


def list_field(idx: int, document: dict[str, Any], keys: tuple[str, ...],
               envelope: str) -> list[Any]:
    """The first of ``keys`` the document has, which must hold a list; else a 400."""
    for key in keys:
        if key in document:
            value = document[key]
            if not isinstance(value, list):
                raise PredictionException(f"{envelope} envelope: \"{key}\" of request {idx} is "
                                          f"not a list", 400)
            return value
    wanted = " or ".join(f'"{key}"' for key in keys)
    raise PredictionException(f"{envelope} envelope: request {idx} has no {wanted}", 400)


def split_by_lengths(results: list[Any], lengths: list[int]) -> list[list[Any]]:
    """The handler's flat results, cut back into each request's share."""
    chunks, cursor = [], 0
    for length in lengths:
        chunks.append(list(results[cursor:cursor + length]))
        cursor += length
    return chunks
