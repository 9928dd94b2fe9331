"""Benchmark handler for a small TorchScript MLP (64 floats in, 10 scores out).

Written against the plain handler contract (one class with ``initialize``/``handle``) rather than
BaseHandler, so both servers run exactly the same Python per batch and the comparison measures
the servers, not two BaseHandler implementations.
"""
from __future__ import annotations

import json
import os
from typing import Any

import torch


class MLPHandler:
    def __init__(self) -> None:
        self.model: torch.jit.ScriptModule | None = None

    def initialize(self, context: Any) -> None:
        # One intra-op thread per worker: the benchmark runs 2 workers on 2 cores, and torch's
        # default (one thread per core in every worker) would oversubscribe the machine.
        torch.set_num_threads(1)
        model_dir = context.system_properties["model_dir"]
        serialized = context.manifest["model"]["serializedFile"]
        self.model = torch.jit.load(os.path.join(model_dir, serialized), map_location="cpu")
        self.model.eval()

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[list[float]]:
        rows = [self._features(item) for item in data]
        with torch.inference_mode():
            scores = self.model(torch.tensor(rows, dtype=torch.float32))
        return scores.tolist()

    @staticmethod
    def _features(item: dict[str, Any]) -> list[float]:
        body = item.get("data")
        if body is None:
            body = item.get("body")
        # Both servers decode application/json bodies; raw bytes are accepted too.
        if isinstance(body, (bytes, bytearray)):
            body = json.loads(body)
        return [float(x) for x in body]
