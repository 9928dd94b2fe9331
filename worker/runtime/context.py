"""The ``context`` handed to handlers: model properties, request headers, response settings,
and the streaming hook (``stream_writer``, ``cl_socket``: worker/runtime/streaming.py)."""
from __future__ import annotations

import copy
from contextvars import ContextVar
from typing import Any

from protocol.messages import SEQUENCE_HEADERS
from worker.runtime.recorder import MetricsRecorder
from worker.runtime.streaming import PartsSocket, StreamWriter


class RequestProcessor:
    """One request of the batch: its headers in, the handler's status and headers out."""

    def __init__(self, request_headers: dict[str, str]) -> None:
        self._request_headers = dict(request_headers)
        self._lower: dict[str, str] | None = None  # built on the first case-insensitive lookup
        self._status_code = 200
        self._reason_phrase = ""
        self._response_headers: dict[str, str] = {}
        self.content_type: str | None = None

    def get_request_property(self, key: str) -> str | None:
        # HTTP header names are case-insensitive and the daemon may hand them over lower-cased,
        # so fall back to a case-insensitive match.
        if key in self._request_headers:
            return self._request_headers[key]
        if self._lower is None:
            self._lower = {name.lower(): value for name, value in self._request_headers.items()}
        return self._lower.get(key.lower())

    def get_request_properties(self) -> dict[str, str]:
        return dict(self._request_headers)

    def report_status(self, code: int, reason_phrase: str | None = None) -> None:
        self._status_code = int(code)
        self._reason_phrase = reason_phrase or ""

    def get_response_status_code(self) -> int:
        return self._status_code

    def get_response_status_phrase(self) -> str:
        return self._reason_phrase

    def add_response_property(self, key: str, value: Any) -> None:
        self._response_headers[key] = str(value)

    def get_response_headers(self) -> dict[str, str]:
        return dict(self._response_headers)

    def get_response_header(self, key: str) -> str | None:
        return self._response_headers.get(key)

    def remove_response_property(self, key: str) -> None:
        self._response_headers.pop(key, None)


# The batch context the running asyncio task works for (async mode, where every batch has its
# own copy of the context). The metrics recorder is shared by all copies: it asks this one for
# the request ids of the batch whose handler is recording. Unset outside async mode.
_task_batch: ContextVar[Context | None] = ContextVar("torchd_task_batch", default=None)


class Context:
    """Everything a handler learns about its model and the batch it is handling.

    Handlers may set attributes of their own (TorchServe handlers keep ``context.cache``)."""

    def __init__(self, model_name: str, model_dir: str, manifest: dict, batch_size: int,
                 gpu: int | None, mms_version: str, limit_max_image_pixels: bool = True,
                 metrics: MetricsRecorder | None = None,
                 model_yaml_config: dict | None = None,
                 sequence_headers: dict[str, str] | None = None) -> None:
        self.model_name = model_name
        self.manifest = manifest
        self._system_properties = {
            "model_dir": model_dir,
            "gpu_id": gpu,
            "batch_size": batch_size,
            "server_name": "torchd",
            "server_version": mms_version,
            "limit_max_image_pixels": limit_max_image_pixels,
        }
        self.request_ids: dict[int, str] | None = None
        self.request_processor: list[RequestProcessor] = []
        self._metrics = metrics if metrics is not None else MetricsRecorder(
            model_name, self._request_id_or_none)
        self.model_yaml_config = model_yaml_config if model_yaml_config is not None else {}
        self.stream_writer: StreamWriter | None = None
        # Continuous batching: one callable per request of the step, set by the handler; the
        # worker asks each whether its request is done. Never reset between steps (TorchServe).
        self.stopping_criteria: Any = None
        headers = {**SEQUENCE_HEADERS, **(sequence_headers or {})}
        self.header_key_sequence_id = headers["id"]
        self.header_key_sequence_start = headers["start"]
        self.header_key_sequence_end = headers["end"]

    @property
    def system_properties(self) -> dict[str, Any]:
        return self._system_properties

    @property
    def cl_socket(self) -> PartsSocket:
        """Where TorchServe's own send_intermediate_predict_response writes a batch's parts."""
        return PartsSocket(self)

    @property
    def metrics(self) -> MetricsRecorder:
        return self._metrics

    @metrics.setter
    def metrics(self, metrics: MetricsRecorder) -> None:
        self._metrics = metrics

    def begin_batch(self, request_ids: list[str], headers: list[dict[str, str]]) -> None:
        """Reset per-request state for a new batch (called by the worker, not by handlers)."""
        self.request_ids = dict(enumerate(request_ids))
        self.request_processor = [RequestProcessor(h) for h in headers]

    def for_batch(self, request_ids: list[str], headers: list[dict[str, str]]) -> Context:
        """A copy of this context for one batch of async mode, where batches run at once: its
        own request ids, headers, statuses, stream writer and stopping criteria; the rest
        (properties, metrics, attributes a handler set at load such as ``cache``) shared.
        TorchServe deep-copies, which would also copy a handler's state and models."""
        batch = copy.copy(self)
        batch.stream_writer = None
        batch.stopping_criteria = None
        batch.begin_batch(request_ids, headers)
        return batch

    def bind_to_task(self) -> None:
        """Make this batch copy the one the shared metrics recorder asks for request ids,
        inside the calling asyncio task only (each task has its own contextvars)."""
        _task_batch.set(self)

    def get_request_id(self, idx: int = 0) -> str | None:
        return self.request_ids.get(idx) if self.request_ids else None

    def _request_id_or_none(self, idx: int) -> str | None:
        batch = _task_batch.get()
        return (self if batch is None else batch).get_request_id(idx)

    def get_request_header(self, idx: int, key: str) -> str | None:
        return self.request_processor[idx].get_request_property(key)

    def get_all_request_header(self, idx: int) -> dict[str, str]:
        return self.request_processor[idx].get_request_properties()

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.request_processor[idx].content_type = value

    def get_response_content_type(self, idx: int) -> str | None:
        return self.request_processor[idx].content_type

    def get_response_status(self, idx: int) -> tuple[int, str]:
        processor = self.request_processor[idx]
        return processor.get_response_status_code(), processor.get_response_status_phrase()

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.request_processor[idx].report_status(code, phrase)

    def set_all_response_status(self, code: int = 200, phrase: str = "") -> None:
        for processor in self.request_processor:
            processor.report_status(code, phrase)

    def get_response_headers(self, idx: int) -> dict[str, str]:
        return self.request_processor[idx].get_response_headers()

    def set_response_header(self, idx: int, key: str, value: Any) -> None:
        self.request_processor[idx].add_response_property(key, value)

    def remove_response_header(self, idx: int, key: str) -> None:
        self.request_processor[idx].remove_response_property(key)

    def get_sequence_id(self, idx: int) -> str | None:
        return self.get_request_header(idx, self.header_key_sequence_id)
