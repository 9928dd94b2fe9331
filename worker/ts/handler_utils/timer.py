"""``@timed``: time a handler step into ``ts_handler_<step>`` when the model asks for it.

As TorchServe: only when the model's model-config.yaml says ``handler: {profile: true}``; the
time goes to ``context.metrics.add_time`` in milliseconds.
"""
from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import torch

Step = TypeVar("Step", bound=Callable[..., Any])


def timed(func: Step) -> Step:
    @functools.wraps(func)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not _profiling(getattr(self, "context", None)):
            return func(self, *args, **kwargs)
        started = time.perf_counter()
        result = func(self, *args, **kwargs)
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()   # GPU work is asynchronous: wait for it before timing
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.context.metrics.add_time("ts_handler_" + func.__name__, elapsed_ms)
        return result
    return cast(Step, wrapper)   # same signature: subclasses' overrides are still checked


def _profiling(context: Any) -> bool:
    config = getattr(context, "model_yaml_config", None) or {}
    handler = config.get("handler") if isinstance(config, dict) else None
    return isinstance(handler, dict) and bool(handler.get("profile"))
