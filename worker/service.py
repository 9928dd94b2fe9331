"""Archive -> handler: resolve the handler string (the archive's module, else a built-in), load it
with a Context, wrap it in the service envelope, run batches."""
from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from worker import codec, responses
from worker.eventloop import settle
from worker.runtime.context import Context

logger = logging.getLogger(__name__)

Entry = Callable[[Any, Context], Any]
# Where TorchServe's built-in handlers and envelopes live (``ts`` is worker.ts unless a real
# TorchServe is installed, see worker/ts_alias.py).
BUILTIN_HANDLERS = "ts.torch_handler"
ENVELOPES = "ts.torch_handler.request_envelope"
# Receives the encoded parts of one send_intermediate_predict_response call.
PartsSink = Callable[[list[dict[str, Any]]], None]
PREDICTION_TIME = "PredictionTime"   # TorchServe's metric of every handler's run, in ms


class HandlerLoadError(Exception):
    """The handler module has no usable entry point."""


def parse_handler(handler: str) -> tuple[str, str | None]:
    """``module``, ``module:function`` or ``path/to/file.py[:function]`` -> (module, function)."""
    function = None
    if ":" in handler:
        handler, function = handler.rsplit(":", 1)
        function = function or None
    module = os.path.basename(handler.rstrip("/"))
    module = module.removesuffix(".py")
    if not module:
        raise HandlerLoadError(f"handler {handler!r} names no module")
    return module, function


def import_handler_module(module_name: str) -> ModuleType:
    """The archive's module of that name, else TorchServe's built-in handler of that name
    (``image_classifier``, ``text_classifier``, ...) from the ``ts`` surface.

    Only a missing module falls back: an archive module that fails to import, or one missing a
    dependency, reports its own error."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        archive_missing = exc
    builtin = f"{BUILTIN_HANDLERS}.{module_name}"
    try:
        return importlib.import_module(builtin)
    except ModuleNotFoundError as exc:
        if exc.name != builtin:
            raise
    raise archive_missing


def wrap_in_envelope(entry: Entry, envelope: str | None) -> Entry:
    """``entry`` behind the named request envelope (TorchServe's ``service_envelope``)."""
    if not envelope:
        return entry
    module = importlib.import_module(f"{ENVELOPES}.{envelope}")
    classes = [c for c in _own_classes(module) if hasattr(c, "parse_input")]
    if not classes:
        raise HandlerLoadError(f"envelope module {module.__name__} defines no envelope class")
    logger.info("requests go through the %s envelope", envelope)
    return classes[0](entry).handle


def _own_classes(module: ModuleType) -> list[type]:
    """Classes defined in ``module`` itself, not imported into it."""
    return [cls for _, cls in inspect.getmembers(module, inspect.isclass)
            if cls.__module__ == module.__name__]


def _handler_classes(module: ModuleType) -> list[type]:
    return [cls for cls in _own_classes(module) if callable(getattr(cls, "handle", None))]


class ModelService:
    """A loaded handler: its entry point, its Context and, if it has one, describe_handle."""

    def __init__(self, entry: Entry, context: Context,
                 describe_fn: Callable[[], Any] | None = None,
                 warm_up_fn: Callable[[Context], Any] | None = None) -> None:
        self.entry = entry
        self.context = context
        self.describe_fn = describe_fn
        self.warm_up_fn = warm_up_fn
        self.load_metrics: list[dict[str, Any]] = []

    @classmethod
    def load(cls, load: dict[str, Any]) -> ModelService:
        """Chdir to the model dir, import the handler and initialize it (LOAD message fields)."""
        model_dir = os.path.abspath(load["model_dir"])
        os.chdir(model_dir)
        if not sys.path or sys.path[0] != model_dir:
            sys.path.insert(0, model_dir)
        importlib.invalidate_caches()
        gpu = load.get("gpu_id")   # the daemon's placement; BaseHandler puts the model there
        context = Context(load["model_name"], model_dir, load.get("manifest") or {},
                          int(load.get("batch_size") or 1), None if gpu is None else int(gpu),
                          load.get("server_version", ""),
                          bool(load.get("limit_max_image_pixels", True)),
                          model_yaml_config=load.get("model_yaml_config") or {},
                          sequence_headers=load.get("sequence_headers"))
        # torchd's property: config.properties' ipex_enable (TorchServe's TS_IPEX_ENABLE)
        context.system_properties["ipex_enable"] = bool(load.get("ipex_enable", False))
        recorder = context.metrics
        recorder.declare(load.get("model_metrics") or [])
        recorder.loading = True
        try:
            service = cls._load_entry(load, context)
        finally:
            recorder.loading = False
        # what initialize recorded goes with LOADED (a warm-up's records are not traffic)
        service.load_metrics = service.take_metrics()
        return service

    @classmethod
    def _load_entry(cls, load: dict[str, Any], context: Context) -> ModelService:
        module_name, function_name = parse_handler(load["handler"])
        module = import_handler_module(module_name)
        if function_name is None and callable(getattr(module, "handle", None)) \
                and not inspect.isclass(module.handle):
            function_name = "handle"
        if function_name is not None:
            service = cls._load_function(module, function_name, context)
        else:
            classes = _handler_classes(module)
            if len(classes) != 1:
                raise HandlerLoadError(f"expected a handle() function or exactly one class with "
                                       f"a handle() method in {module_name}, found "
                                       f"{len(classes)} classes")
            service = cls._load_class(classes[0], context)
        service.entry = wrap_in_envelope(service.entry, load.get("service_envelope"))
        return service

    @classmethod
    def _load_function(cls, module: ModuleType, name: str, context: Context) -> ModelService:
        entry = getattr(module, name, None)
        if entry is None:
            raise HandlerLoadError(f"module {module.__name__} has no function {name}")
        if inspect.isclass(entry):
            return cls._load_class(entry, context)
        # TorchServe's contract: a function handler's load-time call (an async one is run here,
        # before any batch: in async mode too, whose loop starts after the load)
        settle(entry(None, context))
        return cls(entry, context, getattr(module, "describe_handle", None))

    @classmethod
    def _load_class(cls, handler_class: type, context: Context) -> ModelService:
        instance = handler_class()
        if callable(getattr(instance, "initialize", None)):
            instance.initialize(context)
        warm_up = getattr(instance, "warm_up", None)
        return cls(instance.handle, context, getattr(instance, "describe_handle", None),
                   warm_up if callable(warm_up) else None)

    def warm_up(self) -> None:
        """BaseHandler's warm-up: a compiled model compiles now, in the worker (never in a
        template: a compile starts threads, which must not cross a fork), inside the load's
        startup_timeout, not on its first clients' requests. What it records is not served
        traffic."""
        if self.warm_up_fn is not None:
            self.warm_up_fn(self.context)
            self.take_metrics()

    def stream_parts(self, context: Context, emit_parts: PartsSink) -> None:
        """Where the batch that ``context`` now holds sends its streamed parts."""
        context.stream_writer = lambda ret, id_map, message, code: emit_parts(
            responses.encode_parts(context, ret, id_map, message, code))

    def call(self, data: list[Any], context: Context) -> Any:
        """The handler's entry on one batch, its result awaited if it is awaitable (from
        synchronous code: batch and continuous mode), and timed."""
        started = time.perf_counter()
        # An async handler is awaited here: TorchServe would call its coroutine an invalid
        # output, but nothing is lost by running it.
        output = settle(self.entry(data, context))
        self.record_prediction_time(context, time.perf_counter() - started)
        return output

    def run_batch(self, requests: list[dict[str, Any]],
                  emit_parts: PartsSink) -> list[dict[str, Any]]:
        """Run the handler on one batch; one response per request, errors included."""
        requests, data, refused = codec.decode_batch(requests)
        if not requests:
            return refused
        ids = [r["id"] for r in requests]
        self.context.begin_batch(ids, [codec.request_headers(r) for r in requests])
        self.stream_parts(self.context, emit_parts)
        try:
            output = self.call(data, self.context)
            return refused + responses.encode_output(self.context, output, ids)
        except (Exception, SystemExit) as exc:  # a handler must never take the worker down
            return refused + responses.handler_failed(exc, ids)
        finally:
            self.context.stream_writer = None

    def record_prediction_time(self, context: Context, seconds: float) -> None:
        """TorchServe's PredictionTime: the handler's whole run, in ms (HandlerTime is
        BaseHandler's own). A handler may have swapped context.metrics for something else: its
        answers must not fail for that."""
        try:
            context.metrics.add_time(PREDICTION_TIME, round(seconds * 1000, 2))
        except Exception:
            logger.debug("could not record %s", PREDICTION_TIME, exc_info=True)

    def take_metrics(self) -> list[dict[str, Any]]:
        """The metric records of the batch just run, for its RESULT frame."""
        take = getattr(self.context.metrics, "take_pending", None)   # a handler may swap it
        return take() if callable(take) else []

    def describe(self) -> str:
        """describe_handle()'s result as text; empty when the handler has none."""
        if self.describe_fn is None:
            return ""
        result = self.describe_fn()
        if result is None:
            return ""
        if isinstance(result, (bytes, bytearray)):
            return bytes(result).decode("utf-8", errors="replace")
        return result if isinstance(result, str) else json.dumps(result)


# A template's loaded handler (worker/template.py), which the workers it forks take over
# instead of loading again: (the template's LOAD, the service). None in every other process.
_preloaded: tuple[dict[str, Any], ModelService] | None = None
# LOAD fields that differ from worker to worker and mean nothing to the handler's initialize.
PER_WORKER_FIELDS = frozenset({"threads", "max_response_size", "max_request_frame"})


def keep_preloaded(load: dict[str, Any], service: ModelService) -> None:
    """In a template: ``service``, loaded from ``load``, is what its forked workers reuse."""
    global _preloaded
    _preloaded = (load, service)


def take_preloaded(load: dict[str, Any]) -> ModelService | None:
    """The template's service when this process was forked from one that loaded the same
    model (every LOAD field but the worker's own alike); None otherwise. Taken once."""
    global _preloaded
    if _preloaded is None:
        return None
    (template_load, service), _preloaded = _preloaded, None
    differing = sorted(key for key in {*template_load, *load} - PER_WORKER_FIELDS
                       if template_load.get(key) != load.get(key))
    if differing:
        logger.warning("the template loaded model %s with other settings (%s): loading it "
                       "again", template_load.get("model_name"), ", ".join(differing))
        return None
    logger.info("model %s: the template's loaded handler reused (its initialize ran once, "
                "there)", load.get("model_name"))
    return service


def load_service(load: dict[str, Any]) -> tuple[ModelService | None, str | None, float]:
    """(service, None, seconds) on success, (None, "ExcType: message", seconds) on failure."""
    started = time.monotonic()
    try:
        service = take_preloaded(load) or ModelService.load(load)
        service.warm_up()
    except (Exception, SystemExit) as exc:
        logger.exception("loading model %s failed", load.get("model_name"))
        return None, f"{type(exc).__name__}: {exc}", time.monotonic() - started
    seconds = time.monotonic() - started
    logger.info("model %s loaded in %.3f s (gpu_id %s)", load.get("model_name"), seconds,
                load.get("gpu_id"))
    return service, None, seconds
