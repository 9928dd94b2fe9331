"""The compiled and preload rounds' handler, the same file on torchd and TorchServe 0.12.

BaseHandler loads the model (and compiles it when model-config.yaml's ``pt2`` says so); this
handler only reads JSON rows and answers, per request, the output row, the worker's pid,
whether the model it ran is compiled (so the bench can tell when every worker has answered
compiled) and the device BaseHandler put it on (gpu-check --compiled).
"""
import json
import os

import torch
from ts.torch_handler.base_handler import BaseHandler


def _rows(value):
    if isinstance(value, (bytes, bytearray)):
        value = value.decode()
    if isinstance(value, str):
        value = json.loads(value)
    return value


class CompiledHandler(BaseHandler):
    def preprocess(self, data):
        rows = [_rows(row.get("data") or row.get("body")) for row in data]
        return torch.tensor(rows, dtype=torch.float32)

    def inference(self, data, *args, **kwargs):
        with torch.inference_mode():
            return self.model(data)

    def postprocess(self, data):
        compiled = type(self.model).__name__ == "OptimizedModule"
        pid = os.getpid()
        # a row's first 10 values are enough to check the answer; the big model's 7168 are not
        device = str(self.device)
        return [{"y": row[:10], "pid": pid, "compiled": compiled, "device": device}
                for row in data.tolist()]
