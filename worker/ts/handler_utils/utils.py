"""``ts.handler_utils.utils``: streaming a part per request before the end
(worker/runtime/streaming.py), and the class lookup TorchServe's examples build handlers with."""
from __future__ import annotations

import importlib

from worker.runtime.streaming import send_intermediate_predict_response

__all__ = ["import_class", "send_intermediate_predict_response"]


def import_class(class_name: str, module_prefix: str | None = None) -> type:
    """The class named ``"package.module.Class"`` (or ``"module.Class"`` / ``"Class"`` under
    ``module_prefix``); ImportError naming what is missing."""
    if not class_name:
        raise ImportError("class name is not defined")
    module_name, _, name = class_name.rpartition(".")
    if module_prefix:
        module_name = f"{module_prefix}.{module_name}" if module_name else module_prefix
    if not module_name:
        raise ImportError(f"module name is not defined for class {class_name!r}")
    found = getattr(importlib.import_module(module_name), name, None)
    if found is None:
        raise ImportError(f"class:{name} not found in module:{module_name}.")
    return found
