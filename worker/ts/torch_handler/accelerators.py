"""The optional packages BaseHandler may need besides torch: a pt2 backend's (TensorRT,
OpenVINO, ...) and Intel's extension for ``ipex_enable``.

TorchServe imports each one it finds when its handler module loads, and carries on without a
missing one (a warning; the first request then fails, or IPEX is silently skipped). torchd
imports a package only for a model that asks for it, and a missing one fails that model's load
with the package named: the registration's answer says what to install.
"""
from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import Any

import torch

logger = logging.getLogger(__name__)

# pt2 backend -> (the module to import, which also registers the backend with dynamo; the
# package a user installs)
BACKEND_PACKAGES = {
    "tensorrt": ("torch_tensorrt", "torch_tensorrt"),
    "openvino": ("openvino.torch", "openvino"),
    "onnxrt": ("onnxruntime", "onnxruntime"),
    "ipex": ("intel_extension_for_pytorch", "intel_extension_for_pytorch"),
    "torchxla_trace_once": ("torch_xla", "torch_xla"),
    "hpu_backend": ("habana_frameworks.torch", "habana_frameworks"),
}
IPEX_MODULE = "intel_extension_for_pytorch"


class MissingPackageError(RuntimeError):
    """The model's configuration needs a package that cannot be imported."""


def import_backend_package(backend: str) -> None:
    """Import what the pt2 ``backend`` needs besides torch (nothing for torch's own)."""
    if backend not in BACKEND_PACKAGES:
        return
    module, package = BACKEND_PACKAGES[backend]
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise MissingPackageError(f"pt2 backend {backend} needs the package {package}, which "
                                  f"cannot be imported ({exc})") from exc


def import_ipex() -> ModuleType:
    try:
        return importlib.import_module(IPEX_MODULE)
    except ImportError as exc:
        raise MissingPackageError(f"ipex_enable is set but {IPEX_MODULE} is not installed "
                                  f"({exc})") from exc


def ipex_optimize(model: Any, device: torch.device) -> Any:
    """``model`` in channels_last memory format through ``ipex.optimize``, as TorchServe does
    with ``ipex_enable``; a model that is not a torch module (an ONNX session, an AOTInductor
    model) is served as it is, with a warning."""
    ipex = import_ipex()
    if not isinstance(model, torch.nn.Module):
        logger.warning("ipex_enable is set but the model is a %s, not a torch module: it is "
                       "served without IPEX", type(model).__name__)
        return model
    # torch's stubs leave out Module.to's memory_format, which it takes
    model = model.to(memory_format=torch.channels_last).to(device)  # type: ignore[call-overload]
    optimized = ipex.optimize(model)
    logger.info("model optimized with intel_extension_for_pytorch (channels_last)")
    return optimized
