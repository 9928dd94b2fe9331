"""The worker's side of GPU serving, on a machine without one: LOAD's gpu_id reaches the handler,
BaseHandler picks cuda:<gpu_id> only where CUDA is available, a CUDA out-of-memory error is a
507 that leaves the worker serving, and the zygote never initializes CUDA."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.worker.harness import json_request
from worker import codec
from worker.zygote import WARM_MODULES
from worker.ts.torch_handler.base_handler import BaseHandler

CUDA_OOM = (507, "Out of resources: CUDA out of memory on the worker's GPU")


@pytest.mark.parametrize(("exc", "expected"), [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), CUDA_OOM),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), CUDA_OOM),
    (RuntimeError("CUDA error: out of memory"), CUDA_OOM),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"), CUDA_OOM),
    (MemoryError(), (507, "Out of resources")),
    (RuntimeError("CUDA error: device-side assert triggered"), (503, "Prediction failed")),
    (ValueError("CUDA out of memory"), (503, "Prediction failed")),   # not torch's
])
def test_cuda_out_of_memory_is_507(exc, expected):
    assert codec.failure_status(exc) == expected


@pytest.mark.parametrize(("gpu_id", "cuda", "device"), [
    (1, True, "cuda:1"),
    (0, True, "cuda:0"),
    (None, True, "cpu"),
    (1, False, "cpu"),                     # a GPU placement, but this torch sees no CUDA
])
def test_base_handler_device(monkeypatch, gpu_id, cuda, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert BaseHandler()._select_device(gpu_id) == torch.device(device)


def test_gpu_id_from_load_reaches_the_handler(loaded):
    for gpu_id in (0, 3, None):
        worker = loaded("echo", gpu_id=gpu_id)
        _, result = worker.predict([json_request("a", {})])
        answer = json.loads(result["responses"][0]["body"])
        assert answer["system_properties"]["gpu_id"] == gpu_id


def test_base_handler_placed_on_a_gpu_serves_on_the_cpu_without_cuda(loaded, store):
    worker = loaded("mlp_eager", gpu_id=0)
    rows = store.expected("mlp_eager")["inputs"]
    _, result = worker.predict([json_request("a", {"data": rows})])
    [response] = result["responses"]
    assert response["status"] == 200, response
    outputs = store.expected("mlp_eager")["outputs"]
    assert json.loads(response["body"]) == [pytest.approx(row, abs=1e-5) for row in outputs]


def test_cuda_out_of_memory_answers_507_and_the_worker_keeps_serving(loaded):
    worker = loaded("cuda_oom", gpu_id=0)
    for mode in ("oom", "runtime", "oom"):
        _, result = worker.predict([json_request(mode, {"mode": mode})])
        [response] = result["responses"]
        assert (response["status"], response["reason"], response["error"]) == (*CUDA_OOM, True)
    _, result = worker.predict([json_request("ok", {"mode": "ok"})])
    assert result["responses"][0]["body"] == b"fine"


# The zygote's preload, with every way torch starts CUDA recorded: its lazy init, and the
# runtime's device count (cudaGetDeviceCount runs cuInit, which poisons later forks as well;
# torch.cuda.is_available() calls it). On a CPU build of torch neither exists, so both are put
# in place here: anything in the preload that reached for CUDA would be seen on any machine.
ZYGOTE_PRELOAD = """
import json, sys, torch
calls = []
def lazy_init():
    calls.append("torch.cuda._lazy_init")
def device_count():
    calls.append("cudaGetDeviceCount")
    return 0
torch.cuda._lazy_init = lazy_init
torch._C._cuda_getDeviceCount = device_count
from worker.ts_alias import install_ts_alias
from worker import zygote
install_ts_alias()
zygote.warm_up()
print(json.dumps({"calls": calls, "initialized": torch.cuda.is_initialized(),
                  "warm": sorted(m for m in zygote.WARM_MODULES if m in sys.modules)}))
"""


def test_the_zygote_preload_never_initializes_cuda():
    done = subprocess.run([sys.executable, "-c", ZYGOTE_PRELOAD], capture_output=True,
                          text=True, timeout=120, check=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["warm"] == sorted(WARM_MODULES)          # the whole preload ran
    assert report == {**report, "calls": [], "initialized": False}
