"""``BaseHandler``: load the archive's model, then preprocess -> inference -> postprocess.

The model is the manifest's ``serializedFile`` loaded as TorchScript, or, when the manifest names a
``modelFile``, an eager model: the one ``nn.Module`` class in that file, instantiated without
arguments, with the ``serializedFile`` state_dict loaded into it (``weights_only=True``: archives
are never unpickled).
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import time
from typing import Any

import torch

from worker.ts.utils.util import PredictionException, list_classes_from_module, load_label_mapping

logger = logging.getLogger(__name__)

LABEL_MAPPING_FILE = "index_to_name.json"
# Keys of a JSON object body that hold the input rows (TorchServe examples, KServe v1).
INPUT_KEYS = ("data", "instances", "inputs")


class BaseHandler:
    """Default handler: tensors in, lists out. Subclasses override the three steps they need."""

    def __init__(self) -> None:
        self.model: Any = None
        self.mapping: dict[str, Any] | None = None
        self.device: torch.device | None = None
        self.map_location: str | None = None
        self.initialized = False
        self.context: Any = None
        self.manifest: dict[str, Any] | None = None
        self.model_pt_path: str | None = None
        self.model_yaml_config: dict[str, Any] = {}
        self.explain = False
        self.target = 0
        # Rows each request contributed to the batch tensor, so postprocess can split outputs.
        self._rows_per_request: list[int] = []
        self._single_row: list[bool] = []

    # --- loading -------------------------------------------------------------------------

    def initialize(self, context: Any) -> None:
        self.context = context
        self.manifest = context.manifest
        properties = context.system_properties
        model_dir = properties.get("model_dir") or os.getcwd()
        self.device = self._select_device(properties.get("gpu_id"))
        self.map_location = self.device.type
        self.model_yaml_config = getattr(context, "model_yaml_config", None) or {}
        model_info = (self.manifest or {}).get("model", {})
        serialized_file = model_info.get("serializedFile")
        self.model_pt_path = os.path.join(model_dir, serialized_file) if serialized_file else None
        model_file = model_info.get("modelFile")
        if model_file:
            self.model = self._load_pickled_model(model_dir, model_file, self.model_pt_path)
        elif self.model_pt_path:
            self.model = self._load_torchscript_model(self.model_pt_path)
        else:
            raise RuntimeError("the manifest names neither a serializedFile nor a modelFile")
        self.model.eval()
        mapping_path = os.path.join(model_dir, LABEL_MAPPING_FILE)
        if os.path.isfile(mapping_path):
            self.mapping = load_label_mapping(mapping_path)
        self.initialized = True
        logger.info("model %s loaded on %s", getattr(context, "model_name", "?"), self.device)

    def _select_device(self, gpu_id: int | None) -> torch.device:
        if gpu_id is not None and torch.cuda.is_available():
            return torch.device(f"cuda:{gpu_id}")
        return torch.device("cpu")

    def _load_torchscript_model(self, model_pt_path: str) -> Any:
        if not os.path.isfile(model_pt_path):
            raise RuntimeError(f"missing the serialized model file {model_pt_path}")
        return torch.jit.load(model_pt_path, map_location=self.device)

    def _load_pickled_model(self, model_dir: str, model_file: str,
                            model_pt_path: str | None) -> torch.nn.Module:
        """Eager model: the single nn.Module class of ``model_file`` plus its state_dict."""
        module_name = os.path.splitext(os.path.basename(model_file))[0]
        module = importlib.import_module(module_name)
        classes = list_classes_from_module(module, torch.nn.Module)
        if len(classes) != 1:
            raise ValueError(f"expected exactly one nn.Module class in {model_file}, "
                             f"found {len(classes)}")
        model = classes[0]()
        if model_pt_path:
            if not os.path.isfile(model_pt_path):
                raise RuntimeError(f"missing the serialized model file {model_pt_path}")
            state_dict = torch.load(model_pt_path, map_location=self.device, weights_only=True)
            model.load_state_dict(state_dict)
        else:
            logger.warning("no serializedFile in the manifest: %s keeps its initial weights",
                           classes[0].__name__)
        return model.to(self.device)

    # --- the three steps -----------------------------------------------------------------

    def preprocess(self, data: list[Any]) -> torch.Tensor:
        """One tensor for the batch: each request's rows, concatenated along dim 0.

        A request's input is its "data" or "body" value (JSON, or an object holding the rows
        under "data"/"instances"/"inputs"). A flat list is one row, a nested list many rows.
        """
        tensors = []
        self._rows_per_request, self._single_row = [], []
        for idx, row in enumerate(data):
            tensor = self._to_tensor(idx, _request_payload(row))
            single = tensor.dim() <= 1
            tensor = tensor.reshape(1, -1) if single else tensor
            tensors.append(tensor)
            self._rows_per_request.append(tensor.shape[0])
            self._single_row.append(single)
        try:
            return torch.cat(tensors)
        except RuntimeError as exc:
            raise PredictionException(f"requests in the batch have incompatible input shapes: "
                                      f"{exc}", 400) from exc

    def _to_tensor(self, idx: int, value: Any) -> torch.Tensor:
        try:
            return torch.as_tensor(value, dtype=torch.float32, device=self.device)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise PredictionException(f"input of request {idx} is not a list of numbers", 400) \
                from exc

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode():
            if isinstance(data, torch.Tensor):
                data = data.to(self.device)
            return self.model(data, *args, **kwargs)

    def postprocess(self, data: Any) -> list[Any]:
        """Split the output tensor back per request (one row or a list of rows each)."""
        if not isinstance(data, torch.Tensor):
            return data
        counts = self._rows_per_request
        if data.dim() >= 1 and counts and sum(counts) == data.shape[0]:
            parts = torch.split(data, counts)
            return [part[0].tolist() if single else part.tolist()
                    for part, single in zip(parts, self._single_row)]
        return data.tolist()

    # --- entry points --------------------------------------------------------------------

    def handle(self, data: list[Any], context: Any) -> list[Any]:
        started = time.perf_counter()
        self.context = context
        if self._is_describe():
            return [self.describe_handle()]
        data_preprocess = self.preprocess(data)
        if self._is_explain():
            output = self.explain_handle(data_preprocess, data)
        else:
            output = self.postprocess(self.inference(data_preprocess))
        elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
        context.metrics.add_time("HandlerTime", elapsed_ms, None, "ms")
        return output

    def explain_handle(self, data_preprocess: Any, raw_data: list[Any]) -> Any:
        """Explanations come from a subclass's ``get_insights(tensor, inputs, target)``.

        As TorchServe: ``inputs`` is the first request's "data" (else "body") value and
        ``target`` its "target" parameter, 0 when it is missing or empty."""
        get_insights = getattr(self, "get_insights", None)
        if get_insights is None:
            raise PredictionException("this handler does not implement explanations", 501)
        inputs, self.target = None, 0
        first = raw_data[0] if raw_data else None
        if isinstance(first, dict):
            inputs = first.get("data") or first.get("body")
            self.target = first.get("target") or 0
        return get_insights(data_preprocess, inputs, self.target)

    def describe_handle(self) -> Any:
        """Custom metadata for describe?customized=true; None means there is none."""
        return None

    def _header_is_true(self, name: str) -> bool:
        if not self.context or not getattr(self.context, "request_processor", None):
            return False
        value = self.context.get_request_header(0, name)
        return str(value).lower() == "true" if value is not None else False

    def _is_explain(self) -> bool:
        self.explain = self._header_is_true("explain")
        return self.explain

    def _is_describe(self) -> bool:
        return self._header_is_true("describe")


def _request_payload(row: Any) -> Any:
    """A request's input value: its "data" or "body" parameter, JSON-decoded if still bytes."""
    value = row
    if isinstance(row, dict):
        value = row.get("data")
        if value is None:
            value = row.get("body")
    if isinstance(value, (bytes, bytearray, str)):
        try:
            value = json.loads(value)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PredictionException("request body is not JSON", 400) from exc
    if isinstance(value, dict):
        for key in INPUT_KEYS:
            if key in value:
                return value[key]
    return value
