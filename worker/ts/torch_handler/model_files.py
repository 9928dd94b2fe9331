"""Which file of an archive is its model, and how each kind of file loads.

The order is TorchServe 0.12's: the manifest's ``modelFile`` (an eager class whose state_dict
is the ``serializedFile``), else the ``serializedFile`` by its extension: ``.pt`` TorchScript,
``.onnx`` an onnxruntime session, ``.so`` an AOTInductor library when model-config.yaml says
``pt2: {export: {aot_compile: true}}``. torchd adds ``.pt2``, an AOTInductor package
(``torch._inductor.aoti_compile_and_package``), and keeps one leniency: any other extension
(``.pth``, ``.ts``) is still tried as TorchScript.
"""
from __future__ import annotations

import enum
import importlib
import logging
import os
import sys
from typing import Any

import torch

from worker.ts.utils.util import list_classes_from_module

logger = logging.getLogger(__name__)

NO_WEIGHTS = "No model weights could be loaded"   # TorchServe's words, which users search for
ONNX_NEEDS = "needs onnxruntime (pip install torchd[onnx])"
# onnxruntime's tensor types -> numpy's: the batch tensor is cast to what the model's first
# input declares (BaseHandler's preprocess makes float32).
ONNX_INPUT_TYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
    "tensor(uint8)": "uint8", "tensor(bool)": "bool",
}


class ModelFormat(str, enum.Enum):
    EAGER = "eager"                  # modelFile's nn.Module class + a state_dict
    TORCHSCRIPT = "torchscript"      # .pt
    OTHER = "other"                  # any other extension, tried as TorchScript (torchd)
    ONNX = "onnx"                    # .onnx: an onnxruntime InferenceSession
    AOTI_PACKAGE = "aoti_package"    # .pt2: torch._inductor.aoti_load_package (torchd)
    AOT_LIBRARY = "aot_library"      # .so with pt2.export.aot_compile: torch._export.aot_load

    @property
    def is_torch_module(self) -> bool:
        """Loads as an nn.Module (eval() applies, torch.compile and IPEX can wrap it)."""
        return self in (ModelFormat.EAGER, ModelFormat.TORCHSCRIPT, ModelFormat.OTHER)


def model_format(model_file: str | None, serialized_file: str | None,
                 aot_compile: bool) -> ModelFormat:
    """The kind of model an archive holds, from its manifest's files and whether its
    model-config.yaml asks for ``pt2: {export: {aot_compile: true}}``."""
    if model_file:
        return ModelFormat.EAGER
    if not serialized_file:
        raise RuntimeError(f"{NO_WEIGHTS}: the manifest names neither a serializedFile nor a "
                           "modelFile")
    extension = os.path.splitext(serialized_file)[1].lower()
    if extension == ".pt":
        return ModelFormat.TORCHSCRIPT
    if extension == ".onnx":
        return ModelFormat.ONNX
    if extension == ".pt2":
        return ModelFormat.AOTI_PACKAGE
    if extension == ".so":
        if aot_compile:
            return ModelFormat.AOT_LIBRARY
        raise RuntimeError(f"{NO_WEIGHTS}: {serialized_file} is a .so, which loads only with "
                           "pt2: {export: {aot_compile: true}} in model-config.yaml")
    return ModelFormat.OTHER


def require_file(path: str) -> None:
    if not os.path.isfile(path):
        raise RuntimeError(f"missing the serialized model file {path}")


def eager_model_class(model_file: str) -> type:
    """The one nn.Module class of ``model_file`` (a module of the model directory)."""
    module_name = os.path.splitext(os.path.basename(model_file))[0]
    module = importlib.import_module(module_name)
    classes = list_classes_from_module(module, torch.nn.Module)
    if len(classes) != 1:
        raise ValueError(f"expected exactly one nn.Module class in {model_file}, "
                         f"found {len(classes)}")
    return classes[0]


def load_other_as_torchscript(path: str, device: torch.device) -> Any:
    """A serialized file of no known extension: TorchScript, or the error TorchServe gives."""
    try:
        return torch.jit.load(path, map_location=device)
    except Exception as exc:
        raise RuntimeError(f"{NO_WEIGHTS}: {os.path.basename(path)} is not a TorchScript file "
                           f"({type(exc).__name__}: {exc})") from exc


def open_onnx_session(path: str, device: torch.device) -> Any:
    """An onnxruntime InferenceSession for ``path``: on the worker's GPU (then the CPU) when it
    has one, else the CPU, with the worker's share of the CPUs as its threads (TorchServe
    gives every worker's session all of the machine's, which oversubscribes them)."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeError(f"{os.path.basename(path)} is an ONNX model, which {ONNX_NEEDS}") \
            from exc
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            logger.warning("the worker has GPU %s but this onnxruntime has no CUDA provider "
                           "(pip install onnxruntime-gpu): the ONNX model runs on the CPU",
                           device.index)
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(path, sess_options=options, providers=providers)
    logger.info("ONNX session for %s on %s with %d threads", os.path.basename(path),
                session.get_providers()[0], options.intra_op_num_threads)
    return session


def is_onnx_session(model: Any) -> bool:
    onnxruntime = sys.modules.get("onnxruntime")
    return onnxruntime is not None and isinstance(model, onnxruntime.InferenceSession)


def onnx_forward(session: Any, batch: torch.Tensor) -> Any:
    """Run ``session`` as BaseHandler runs a torch model: the batch tensor is its first input,
    its first output comes back as a tensor."""
    first = session.get_inputs()[0]
    array = batch.detach().cpu().numpy()
    dtype = ONNX_INPUT_TYPES.get(first.type)
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    output = session.run(None, {first.name: array})[0]
    try:
        return torch.from_numpy(output)
    except TypeError:   # a sequence or map output: the handler's postprocess gets it as it is
        return output


def load_aoti_package(path: str, device: torch.device) -> Any:
    """A ``.pt2`` made by ``torch._inductor.aoti_compile_and_package``, on the worker's GPU
    when it has one."""
    import torch._inductor   # its own import: plain `import torch` does not load inductor
    index = (device.index or 0) if device.type == "cuda" else -1
    try:
        return torch._inductor.aoti_load_package(path, device_index=index)
    except Exception as exc:
        raise RuntimeError(f"{NO_WEIGHTS}: {os.path.basename(path)} is not an AOTInductor "
                           f"package ({type(exc).__name__}: {exc})") from exc


def load_aot_library(path: str, device: torch.device) -> Any:
    """A ``.so`` made by ``torch._export.aot_compile``. Its loader takes a device type only,
    so a GPU worker makes its own GPU the current one first (as TorchServe)."""
    import torch._export
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # dlopen looks a bare file name up on the library path, not in the working directory
    return torch._export.aot_load(os.path.abspath(path), device.type)
