"""``BaseHandler``: load the archive's model, then preprocess -> inference -> postprocess.

The model is whatever the archive holds, found as TorchServe 0.12 finds it (model_files.py): an
eager model (the one ``nn.Module`` class of the manifest's ``modelFile``, instantiated without
arguments, with the ``serializedFile`` state_dict loaded into it, ``weights_only=True``: archives
are never unpickled), TorchScript, an ONNX session, or an AOTInductor model. model-config.yaml's
``pt2`` section may then compile it (pt2.py); ``ipex_enable`` runs it through IPEX. A compiled
model is compiled before the worker is READY by ``warm_up`` (warm_up.py).
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import torch

from worker.ts.handler_utils.timer import timed
from worker.ts.torch_handler import model_files
from worker.ts.torch_handler.accelerators import import_ipex, ipex_optimize
from worker.ts.torch_handler.model_files import ModelFormat
from worker.ts.torch_handler.profiling import profiler_enabled, run_profiled
from worker.ts.torch_handler.pt2 import CompilePlan, compile_model, compile_plan, uses_aot_compile
from worker.ts.torch_handler.warm_up import run_warm_up
from worker.ts.utils.util import PredictionException, load_label_mapping

logger = logging.getLogger(__name__)

LABEL_MAPPING_FILE = "index_to_name.json"
# Keys of a JSON object body that hold the input rows (TorchServe examples, KServe v1).
INPUT_KEYS = ("data", "instances", "inputs")


class BaseHandler:
    """Default handler: tensors in, lists out. Subclasses override the three steps they need."""

    # Class-level defaults too: some TorchServe handlers never call BaseHandler.__init__.
    model_format: ModelFormat | None = None
    compiled_backend: str | None = None   # the torch.compile backend; None: not compiled

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
        self.model_format = None
        self.compiled_backend = None
        self.explain = False
        self.target = 0
        self.profiler_args: dict[str, Any] = {}
        # Per (micro-)batch: the rows each request put in the batch tensor and whether it sent
        # a single row, so postprocess can split the outputs back.
        self._layouts: dict[int | None, tuple[list[int], list[bool]]] = {}

    # --- loading -------------------------------------------------------------------------

    def initialize(self, context: Any) -> None:
        self.context = context
        self.manifest = context.manifest
        properties = context.system_properties
        model_dir = properties.get("model_dir") or os.getcwd()
        self.device = self._select_device(properties.get("gpu_id"))
        self.map_location = self.device.type
        self.model_yaml_config = getattr(context, "model_yaml_config", None) or {}
        plan = compile_plan(self.model_yaml_config)   # a pt2 section it cannot read fails first
        ipex_enable = bool(properties.get("ipex_enable"))
        if ipex_enable:
            import_ipex()
        self.model = self._load_model(model_dir)
        self._optimize(plan, ipex_enable)
        mapping_path = os.path.join(model_dir, LABEL_MAPPING_FILE)
        if os.path.isfile(mapping_path):
            self.mapping = load_label_mapping(mapping_path)
        self.initialized = True
        logger.info("model %s (%s) loaded on %s", getattr(context, "model_name", "?"),
                    self.model_format.value if self.model_format else "?", self.device)

    def _select_device(self, gpu_id: int | None) -> torch.device:
        if gpu_id is not None and torch.cuda.is_available():
            return torch.device(f"cuda:{gpu_id}")
        return torch.device("cpu")

    def _load_model(self, model_dir: str) -> Any:
        """The archive's model, by the manifest's files (model_files.model_format's order)."""
        model_info = (self.manifest or {}).get("model", {})
        serialized_file = model_info.get("serializedFile")
        model_file = model_info.get("modelFile")
        self.model_pt_path = os.path.join(model_dir, serialized_file) if serialized_file else None
        self.model_format = model_files.model_format(
            model_file, serialized_file, uses_aot_compile(self.model_yaml_config))
        if self.model_format is ModelFormat.EAGER:
            model = self._load_pickled_model(model_dir, model_file, self.model_pt_path)
        else:
            assert self.model_pt_path is not None and self.device is not None
            model_files.require_file(self.model_pt_path)
            model = self._load_serialized(self.model_format, self.model_pt_path, self.device)
        if self.model_format.is_torch_module:
            model.eval()
        return model

    def _load_serialized(self, kind: ModelFormat, path: str, device: torch.device) -> Any:
        if kind is ModelFormat.TORCHSCRIPT:
            return self._load_torchscript_model(path)
        if kind is ModelFormat.ONNX:
            return model_files.open_onnx_session(path, device)
        if kind is ModelFormat.AOTI_PACKAGE:
            return model_files.load_aoti_package(path, device)
        if kind is ModelFormat.AOT_LIBRARY:
            return self._load_torch_export_aot_compile(path)
        return model_files.load_other_as_torchscript(path, device)

    def _load_torchscript_model(self, model_pt_path: str) -> Any:
        model_files.require_file(model_pt_path)
        return torch.jit.load(model_pt_path, map_location=self.device)

    def _load_torch_export_aot_compile(self, model_so_path: str) -> Any:
        assert self.device is not None
        model = model_files.load_aot_library(model_so_path, self.device)
        logger.warning("torch._export is experimental: loaded the AOTInductor library %s",
                       os.path.basename(model_so_path))
        return model

    def _load_pickled_model(self, model_dir: str, model_file: str,
                            model_pt_path: str | None) -> torch.nn.Module:
        """Eager model: the single nn.Module class of ``model_file`` plus its state_dict."""
        model_class = model_files.eager_model_class(model_file)
        model = model_class()
        if model_pt_path:
            model_files.require_file(model_pt_path)
            state_dict = torch.load(model_pt_path, map_location=self.device, weights_only=True)
            model.load_state_dict(state_dict)
        else:
            logger.warning("no serializedFile in the manifest: %s keeps its initial weights",
                           model_class.__name__)
        return model.to(self.device)

    def _optimize(self, plan: CompilePlan, ipex_enable: bool) -> None:
        """torch.compile as the pt2 section says, else IPEX when ``ipex_enable`` is set."""
        torch_module = self.model_format is not None and self.model_format.is_torch_module
        if plan.kwargs is not None and not torch_module:
            logger.warning("pt2 compile is for torch models: the %s model is served as it is",
                           self.model_format.value if self.model_format else "?")
            return
        self.model, compiled = compile_model(self.model, plan)
        if compiled:
            self.compiled_backend = plan.backend
        elif ipex_enable and plan.kwargs is None:
            assert self.device is not None
            self.model = ipex_optimize(self.model, self.device)

    def get_device(self) -> torch.device | None:
        return self.device

    # --- warm-up (torchd) ----------------------------------------------------------------

    def warmup_requests(self) -> list[Any]:
        """Request bodies that ``warm_up`` runs through ``handle`` before the worker is READY:
        by default model-config.yaml's ``handler: {warmup: [<body>, ...]}``, each entry the
        JSON value of one request's body. Subclasses may return their own."""
        config = (getattr(self, "model_yaml_config", None)
                  or getattr(getattr(self, "context", None), "model_yaml_config", None) or {})
        section = config.get("handler") if isinstance(config, dict) else None
        bodies = section.get("warmup") if isinstance(section, dict) else None
        if bodies is None:
            return []
        if not isinstance(bodies, list):
            raise ValueError(f"handler.warmup in model-config.yaml should be a list of request "
                             f"bodies, not {type(bodies).__name__}")
        return bodies

    def warm_up(self, context: Any) -> None:
        """Called by the worker after ``initialize``, before it reports the model loaded: run
        ``warmup_requests()`` alone and as one batch, so a compiled model's compiles happen
        now rather than on its first clients' requests. A failure fails the load."""
        bodies = self.warmup_requests()
        if bodies:
            run_warm_up(self.handle, context, bodies, self.compiled_backend or "")
        elif self.compiled_backend:
            logger.warning("the model is compiled with %s but model-config.yaml lists no "
                           "handler.warmup requests: its first requests pay for the compile",
                           self.compiled_backend)

    # --- the three steps -----------------------------------------------------------------

    @timed
    def preprocess(self, data: list[Any]) -> torch.Tensor:
        """One tensor for the batch: each request's rows, concatenated along dim 0.

        A request's input is its "data" or "body" value (JSON, or an object holding the rows
        under "data"/"instances"/"inputs"). A flat list is one row, a nested list many rows.
        """
        tensors, rows, singles = [], [], []
        for idx, row in enumerate(data):
            tensor = self._to_tensor(idx, _request_payload(row))
            single = tensor.dim() <= 1
            tensor = tensor.reshape(1, -1) if single else tensor
            tensors.append(tensor)
            rows.append(tensor.shape[0])
            singles.append(single)
        self._batch_layouts()[self._micro_batch()] = (rows, singles)
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

    @timed
    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode():
            if model_files.is_onnx_session(self.model):
                return model_files.onnx_forward(self.model, data)
            if isinstance(data, torch.Tensor):
                data = data.to(self.device)
            return self.model(data, *args, **kwargs)

    @timed
    def postprocess(self, data: Any) -> list[Any]:
        """Split the output tensor back per request (one row or a list of rows each)."""
        if not isinstance(data, torch.Tensor):
            return data
        counts, singles = self._batch_layouts().get(self._micro_batch(), ([], []))
        if data.dim() >= 1 and counts and sum(counts) == data.shape[0]:
            parts = torch.split(data, counts)
            return [part[0].tolist() if single else part.tolist()
                    for part, single in zip(parts, singles)]
        return data.tolist()

    def _batch_layouts(self) -> dict[int | None, tuple[list[int], list[bool]]]:
        # made here as well: a subclass that skips BaseHandler.__init__ still splits outputs
        return self.__dict__.setdefault("_layouts", {})

    def _micro_batch(self) -> int | None:
        """Which micro-batch this step works on when ``self.handle`` is a MicroBatching (its
        steps run on several threads at once), else None."""
        index = getattr(self.handle, "get_micro_batch_idx", None)
        return index() if callable(index) else None

    # --- entry points --------------------------------------------------------------------

    def handle(self, data: list[Any], context: Any) -> list[Any]:
        started = time.perf_counter()
        self.context = context
        if self._is_describe():
            return [self.describe_handle()]
        if profiler_enabled():   # TorchServe's ENABLE_TORCH_PROFILER (profiling.py)
            output, _ = self._infer_with_profiler(data)
        else:
            data_preprocess = self.preprocess(data)
            if self._is_explain():
                output = self.explain_handle(data_preprocess, data)
            else:
                output = self.postprocess(self.inference(data_preprocess))
        elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
        context.metrics.add_time("HandlerTime", elapsed_ms, None, "ms")
        return output

    def _infer_with_profiler(self, data: list[Any]) -> tuple[Any, Any]:
        """The batch's steps under torch's profiler: the output and the profile."""
        return run_profiled(self, data)

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
