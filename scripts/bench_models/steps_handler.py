"""Benchmark handler for step-wise generation: continuous batching against static batching.

A request's body is JSON ``{"k": int}``: the request is answered with ``k`` streamed parts,
``{"step": 1}`` .. ``{"step": k}``, one per step. Each step runs a tiny model (a 64 -> 64 linear
layer) once for the whole running batch, one row per request, the shape of a decoder's step.
Written against TorchServe 0.12's handler API (BaseHandler, ``send_intermediate_predict_response``,
``context.cache``/``context.stopping_criteria``) so both servers run it unchanged.

Two modes, chosen by the archive's model-config.yaml:

- ``continuousBatching: true``: one call is ONE step of the running batch. A request whose id is
  not in ``context.cache`` is new (its body is in its data); a continuing one arrives with an
  empty dict. postprocess sets ``context.stopping_criteria``: one callable per request, False
  until the request's k-th step, then True (and its cache entry goes). The server sends each
  call's values as parts and puts the unfinished requests in the next step's batch, with the new
  requests that arrived meanwhile (TorchServe's ContinuousBatching aggregator).
- otherwise (static batching): one call runs ALL the steps of its batch, sending each request's
  parts with ``send_intermediate_predict_response`` and returning the last ones; a request's
  answer ends with its batch, and requests that arrive meanwhile wait for the whole batch.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch
from ts.handler_utils.utils import send_intermediate_predict_response
from ts.torch_handler.base_handler import BaseHandler

WIDTH = 64


class StepsHandler(BaseHandler):
    def initialize(self, context: Any) -> None:
        # No model file: the model is made here, the same on every worker (seeded).
        torch.set_num_threads(1)   # 1 worker on a small machine, beside the server and clients
        self.context = context
        generator = torch.Generator().manual_seed(0)
        self.layer = torch.nn.Linear(WIDTH, WIDTH)
        with torch.no_grad():
            self.layer.weight.copy_(torch.randn(WIDTH, WIDTH, generator=generator) / 8)
            self.layer.bias.zero_()
        self.layer.eval()
        config = getattr(context, "model_yaml_config", None) or {}
        self.continuous = bool(config.get("continuousBatching"))
        context.cache = {}   # request id -> {"k", "step", "state"} (continuous batching)
        self.initialized = True

    # ---------------------------------------------------------------- continuous batching

    def preprocess(self, data: list[Any]) -> list[str]:
        ids = list(self.context.request_ids.values())
        for request_id, item in zip(ids, data):
            if request_id not in self.context.cache:   # new: its body is here
                self.context.cache[request_id] = {"k": steps_wanted(item), "step": 0,
                                                  "state": torch.zeros(WIDTH)}
        return ids

    def inference(self, ids: list[str]) -> list[dict[str, int]]:
        if not self.continuous:
            raise RuntimeError("inference is the continuous-batching step")
        entries = [self.context.cache[request_id] for request_id in ids]
        if not entries:
            return []
        states = self.step(torch.stack([entry["state"] for entry in entries]))
        out = []
        for entry, state in zip(entries, states):
            entry["state"] = state
            entry["step"] += 1
            out.append({"step": entry["step"]})
        return out

    def postprocess(self, parts: list[dict[str, int]]) -> list[dict[str, int]]:
        ids = list(self.context.request_ids.values())
        self.context.stopping_criteria = [self.stop_after_last_step(i) for i in ids]
        return parts

    def stop_after_last_step(self, request_id: str) -> Callable[[Any], bool]:
        cache = self.context.cache

        def stop(_part: Any) -> bool:
            entry = cache.get(request_id)
            if entry is None or entry["step"] >= entry["k"]:
                cache.pop(request_id, None)
                return True
            return False

        return stop

    # ---------------------------------------------------------------- both modes

    def handle(self, data: list[Any], context: Any) -> list[dict[str, int]]:
        if self.continuous:
            return super().handle(data, context)
        self.context = context
        return self.generate_whole_batch(data)

    def step(self, states: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return torch.tanh(self.layer(states))

    def generate_whole_batch(self, data: list[Any]) -> list[dict[str, int]]:
        """Static batching: every step of every request of the batch, in this one call."""
        id_map = dict(self.context.request_ids)          # batch index -> request id
        wanted = [steps_wanted(item) for item in data]
        states = torch.zeros(len(data), WIDTH)
        last: list[dict[str, int]] = [{}] * len(data)
        for step_no in range(1, max(wanted) + 1):
            running = [idx for idx, k in enumerate(wanted) if k >= step_no]
            states[running] = self.step(states[running])
            parts = {idx: {"step": step_no} for idx in running if wanted[idx] > step_no}
            for idx in running:
                if wanted[idx] == step_no:
                    last[idx] = {"step": step_no}   # its final part: the return value
            if parts:
                send_intermediate_predict_response(parts, {i: id_map[i] for i in parts},
                                                   "Intermediate Prediction success", 200,
                                                   self.context)
        return last


def steps_wanted(item: Any) -> int:
    """``k`` of a request's JSON body (the servers hand it decoded, as text or as bytes)."""
    body = item.get("data") if isinstance(item, dict) else None
    if body is None and isinstance(item, dict):
        body = item.get("body")
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8")
    if isinstance(body, str):
        body = json.loads(body)
    if not isinstance(body, dict) or not isinstance(body.get("k"), int) or body["k"] < 1:
        raise ValueError(f"expected a JSON body {{\"k\": <positive int>}}, got {body!r:.100}")
    return body["k"]
