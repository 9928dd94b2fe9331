"""Benchmark handler that does no work: every request is answered ``{"ok": 1}``.

It measures the server alone (HTTP, queueing, the frontend-worker round trip), so it imports
nothing beyond the standard library. A module-level ``handle`` is the plainest handler both
TorchServe and torchd accept; it is called once with ``data=None`` when the worker loads.
"""
from __future__ import annotations

from typing import Any


def handle(data: list[Any] | None, context: Any) -> list[dict[str, int]] | None:
    if data is None:
        return None
    return [{"ok": 1} for _ in data]
