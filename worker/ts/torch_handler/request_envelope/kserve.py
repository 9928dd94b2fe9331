"""``kserve`` envelope (KServe's v1 protocol): ``{"instances": [...]}`` (or ``"inputs"``) in, each
instance one handler row; ``{"predictions": [...]}`` out, ``{"explanations": [...]}`` for a
request with the ``explain: True`` header."""
from __future__ import annotations

from typing import Any

from worker.ts.torch_handler.request_envelope.base import (
    BaseEnvelope,
    json_document,
    list_field,
    request_value,
    split_by_lengths,
)


class KServeEnvelope(BaseEnvelope):
    def __init__(self, handle_fn: Any) -> None:
        super().__init__(handle_fn)
        self._lengths: list[int] = []

    def parse_input(self, data: list[Any]) -> list[Any]:
        batches = [list_field(idx, json_document(idx, request_value(row), "kserve"),
                              ("instances", "inputs"), "kserve")
                   for idx, row in enumerate(data)]
        self._lengths = [len(instances) for instances in batches]
        return [instance for instances in batches for instance in instances]

    def format_output(self, data: list[Any]) -> list[Any]:
        chunks = split_by_lengths(data, self._lengths)
        return [{self._result_key(idx): chunk} for idx, chunk in enumerate(chunks)]

    def _result_key(self, idx: int) -> str:
        explain = self.context.get_request_header(idx, "explain") if self.context else None
        return "explanations" if explain == "True" else "predictions"
