"""Continuous batching: every request streams ``k`` steps, one part per step.

Body (JSON): {"k": int, "tag": str}; {"fail": true} makes the step it joins raise (the whole
running batch fails). Part i of a request is {"tag": tag, "step": i}, i = 1..k; the k-th is its
last answer. Each response has the header ``x-step-batch``: how many requests that step ran,
so a client can see requests join and leave the running batch.
"""
import json

import torch

from ts.context import Context
from ts.torch_handler.base_handler import BaseHandler

STEP_BATCH_HEADER = "x-step-batch"


def _body(row):
    body = row.get("body")
    if body is None:
        body = row.get("data")
    if isinstance(body, (bytes, bytearray, str)):
        body = json.loads(body)
    return body


class StepsHandler(BaseHandler):
    def initialize(self, context: Context):
        self.context = context
        # Per request id: {"k", "tag", "step"}. TorchServe's own handlers keep it on the context.
        context.cache = {}
        torch.manual_seed(0)
        self.model = torch.nn.Linear(8, 8).eval()
        self.initialized = True

    def preprocess(self, data):
        ids = list(self.context.request_ids.values())
        # Every running request takes part in every step: one missing from this step has left
        # the running batch (cancelled, or failed with a step), and never comes back.
        for request_id in [i for i in self.context.cache if i not in ids]:
            del self.context.cache[request_id]
        for request_id, row in zip(ids, data):
            if request_id in self.context.cache:
                continue   # a continuing request: TorchServe sends it without parameters
            body = _body(row)
            if body.get("fail"):
                raise ValueError(f"request {request_id} asked this step to fail")
            self.context.cache[request_id] = {"k": int(body["k"]), "tag": str(body.get("tag", "")),
                                              "step": 0}
        return torch.ones(len(data), 8)

    def inference(self, data, *args, **kwargs):
        with torch.inference_mode():
            self.model(data)   # one tiny forward pass per step, for all its requests at once
        parts = []
        for request_id in self.context.request_ids.values():
            state = self.context.cache[request_id]
            state["step"] += 1
            parts.append({"tag": state["tag"], "step": state["step"]})
        return parts

    def postprocess(self, data):
        for idx in range(len(data)):
            self.context.set_response_header(idx, STEP_BATCH_HEADER, str(len(data)))
        self.context.stopping_criteria = [self._stopping_criteria(request_id)
                                          for request_id in self.context.request_ids.values()]
        return data

    def _stopping_criteria(self, request_id):
        def done(_part):
            state = self.context.cache[request_id]
            if state["step"] < state["k"]:
                return False
            del self.context.cache[request_id]
            return True
        return done
