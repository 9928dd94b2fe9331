"""``body`` envelope: the handler sees each request's bare "data"/"body" value; answers pass as
they are."""
from __future__ import annotations

from typing import Any

from worker.ts.torch_handler.request_envelope.base import BaseEnvelope, request_value


class BodyEnvelope(BaseEnvelope):
    def parse_input(self, data: list[Any]) -> list[Any]:
        return [request_value(row) for row in data]

    def format_output(self, data: list[Any]) -> list[Any]:
        return data
