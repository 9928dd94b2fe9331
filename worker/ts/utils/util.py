"""Utilities TorchServe handlers import from ``ts.utils.util``."""
from __future__ import annotations

import enum
import inspect
import json
import logging
import os
import re
from types import ModuleType
from typing import Any

import yaml

logger = logging.getLogger(__name__)

# What TorchServe's text handlers strip from input before tokenizing: a markup tag (on one
# line), or a character reference (&amp;, &#39;, &#x27;). Its examples import it from here.
CLEANUP_REGEX = re.compile(r"<.*?>|&(?:[a-z0-9]+|#[0-9]{1,6}|#x[0-9a-f]{1,6});")


def get_yaml_config(yaml_file_path: str) -> dict[str, Any]:
    """A YAML file's contents (safe_load: never an arbitrary object); {} for an empty file."""
    with open(yaml_file_path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


class PT2Backend(str, enum.Enum):
    """The ``torch.compile`` backends a model-config.yaml ``pt2`` section may name (TorchServe's
    list: a name outside it is refused with a warning, and the model stays eager)."""

    EAGER = "eager"
    AOT_EAGER = "aot_eager"
    INDUCTOR = "inductor"
    NVFUSER = "nvfuser"
    AOT_NVFUSER = "aot_nvfuser"
    AOT_CUDAGRAPHS = "aot_cudagraphs"
    OFI = "ofi"
    FX2TRT = "fx2trt"
    ONNXRT = "onnxrt"
    IPEX = "ipex"
    TORCHXLA_TRACE_ONCE = "torchxla_trace_once"
    OPENVINO = "openvino"
    TENSORRT = "tensorrt"
    HPU_BACKEND = "hpu_backend"


def check_valid_pt2_backend(backend: Any) -> bool:
    """True when ``backend`` is one of PT2Backend's names; else a warning and False."""
    if backend in [member.value for member in PT2Backend]:
        return True
    logger.warning("%s is not a supported pt2 backend (one of %s)", backend,
                   ", ".join(member.value for member in PT2Backend))
    return False


class PredictionException(Exception):
    """Raised by a handler to answer every request of its batch with ``error_code``."""

    def __init__(self, message: str, error_code: int = 500) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code

    def __str__(self) -> str:
        return f"{self.message} : {self.error_code}"


def list_classes_from_module(module: ModuleType, parent_class: type | None = None) -> list[type]:
    """Classes defined in ``module`` itself (not imported into it), optionally only subclasses."""
    classes = [cls for _, cls in inspect.getmembers(module, inspect.isclass)
               if cls.__module__ == module.__name__]
    if parent_class is not None:
        classes = [cls for cls in classes if issubclass(cls, parent_class)]
    return classes


def load_label_mapping(mapping_file_path: str) -> dict[str, Any] | None:
    """Read an ``index_to_name.json`` style mapping; None when the file does not exist."""
    if not os.path.isfile(mapping_file_path):
        logger.warning("no label mapping file at %s", mapping_file_path)
        return None
    with open(mapping_file_path, encoding="utf-8") as handle:
        mapping = json.load(handle)
    if not isinstance(mapping, dict):
        raise TypeError(f"label mapping in {mapping_file_path} must be a JSON object")
    # Older object detection examples list their names: {"object_type_names": ["person", ...]}.
    names = mapping.get("object_type_names")
    if isinstance(names, list):
        return {str(index): name for index, name in enumerate(names)}
    # Some mappings are {"0": ["n01440764", "tench"]}; the last element is the readable name.
    return {key: value[-1] if isinstance(value, list) else value for key, value in mapping.items()}


def map_class_to_label(probs: list[list[float]], mapping: dict[str, Any] | None = None,
                       lbl_classes: list[list[Any]] | None = None) -> list[dict[str, float]]:
    """Pair each row's probabilities with its class labels: one {label: prob} dict per row."""
    if not isinstance(probs, list) or not all(isinstance(row, list) for row in probs):
        raise TypeError("probs must be a list of lists")
    if lbl_classes is None:
        lbl_classes = [[str(index) for index in range(len(row))] for row in probs]
    rows = []
    for row_probs, row_classes in zip(probs, lbl_classes):
        labels = [mapping.get(str(cls), str(cls)) if mapping else str(cls) for cls in row_classes]
        rows.append(dict(zip(labels, row_probs)))
    return rows
