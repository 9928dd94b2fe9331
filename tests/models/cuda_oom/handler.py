"""Raises what torch raises when a GPU's memory runs out (raising it needs no GPU): body
{"mode": "oom"} torch.cuda.OutOfMemoryError, {"mode": "runtime"} the RuntimeError older torch
releases and some kernels raise, anything else answers "fine"."""
import torch


def handle(data, context):
    if data is None:
        return None
    mode = (data[0].get("body") or {}).get("mode")
    if mode == "oom":
        raise torch.cuda.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of "
            "139.81 GiB of which 1.20 GiB is free.")
    if mode == "runtime":
        raise RuntimeError("CUDA error: out of memory")
    return ["fine" for _ in data]
