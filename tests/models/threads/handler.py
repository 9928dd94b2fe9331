"""Reports the torch thread counts this worker runs with (after an optional sleep, so that
concurrent requests spread over several workers)."""
import os
import time

import torch


def handle(data, context):
    if data is None:
        return None
    answers = []
    for row in data:
        body = row.get("body") or b""
        if isinstance(body, (bytes, bytearray)) and body.startswith(b"sleep"):
            time.sleep(float(body[5:] or 0.3))
        torch.ones(64, 64) @ torch.ones(64, 64)   # the pools in use, as in a real model
        answers.append({"pid": os.getpid(), "intra": torch.get_num_threads(),
                        "inter": torch.get_num_interop_threads(),
                        "omp": os.environ.get("OMP_NUM_THREADS")})
    return answers
