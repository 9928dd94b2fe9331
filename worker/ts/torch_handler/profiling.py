"""TorchServe's handler profiling: with ``ENABLE_TORCH_PROFILER`` set (any value) in the
server's environment, ``BaseHandler.handle`` runs each batch's steps under torch's profiler,
writes a trace per batch for TensorBoard's profiler plugin (or Perfetto) to
``/tmp/pytorch_profiler/<model name>/``, and logs the ten most expensive operators.

The switch is TorchServe's handler API, read where its BaseHandler reads it (workers inherit the
daemon's environment). ``handler.profiler_args`` overrides the profiler's arguments as on
TorchServe: CPU (and CUDA on a GPU worker) activities with shapes recorded, the trace handler
above unless the handler gives its own ``on_trace_ready``.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

logger = logging.getLogger(__name__)

PROFILER_ENV = "ENABLE_TORCH_PROFILER"
TRACE_ROOT = "/tmp/pytorch_profiler"   # TorchServe's


def profiler_enabled() -> bool:
    return bool(os.environ.get(PROFILER_ENV))


def profiler_arguments(handler: Any) -> dict[str, Any]:
    """``handler.profiler_args``, completed with TorchServe's defaults (and kept there, as
    TorchServe keeps them)."""
    args = handler.profiler_args
    if not args:
        device = getattr(handler, "device", None)
        cuda = device is not None and device.type == "cuda"
        args["activities"] = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
        args["record_shapes"] = True
    if "on_trace_ready" not in args:
        manifest = handler.manifest or getattr(handler.context, "manifest", None) or {}
        name = manifest.get("model", {}).get("modelName", "")
        directory = os.path.join(TRACE_ROOT, name)
        args["on_trace_ready"] = torch.profiler.tensorboard_trace_handler(directory)
        logger.info("saving profiler traces to %s", directory)
    return args


def run_profiled(handler: Any, data: list[Any]) -> tuple[Any, Any]:
    """The batch's preprocess, inference and postprocess (or explain), each a labelled range of
    one profile; the output and the profile."""
    with profile(**profiler_arguments(handler)) as prof:
        with record_function("preprocess"):
            data_preprocess = handler.preprocess(data)
        if handler._is_explain():
            with record_function("explain"):
                output = handler.explain_handle(data_preprocess, data)
        else:
            with record_function("inference"):
                output = handler.inference(data_preprocess)
            with record_function("postprocess"):
                output = handler.postprocess(output)
    logger.info("profile of the batch:\n%s",
                prof.key_averages().table(sort_by="cpu_time_total", row_limit=10))
    return output, prof
