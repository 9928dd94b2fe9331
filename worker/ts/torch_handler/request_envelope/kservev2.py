"""``kservev2`` envelope (the Open Inference Protocol): each input tensor of a request is one
handler row, ``{"name", "shape", "datatype", "data"}`` with ``data`` nested to ``shape`` (a BYTES
input: its first element); each result is one output tensor named after its input, flattened:

    {"id": ..., "model_name": ..., "model_version": ...,
     "outputs": [{"name": ..., "datatype": "FP64", "data": [...], "shape": [n]}]}

``id`` is the request's own "id" when it has one, else the request id torchd gave it.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from worker.ts.torch_handler.request_envelope.base import (
    BaseEnvelope,
    json_document,
    list_field,
    request_value,
    split_by_lengths,
)
from worker.ts.utils.util import PredictionException

_TORCH_DATATYPES = {
    torch.bool: "BOOL", torch.uint8: "UINT8", torch.int8: "INT8", torch.int16: "INT16",
    torch.int32: "INT32", torch.int64: "INT64", torch.float16: "FP16", torch.float32: "FP32",
    torch.float64: "FP64",
}


class KServev2Envelope(BaseEnvelope):
    def __init__(self, handle_fn: Any) -> None:
        super().__init__(handle_fn)
        self._names: list[list[str]] = []      # per request: its inputs' names
        self._ids: list[str | None] = []       # per request: its own "id", if any

    def parse_input(self, data: list[Any]) -> list[Any]:
        self._names, self._ids, rows = [], [], []
        for idx, row in enumerate(data):
            document = json_document(idx, request_value(row), "kservev2")
            inputs = [_input_row(idx, tensor)
                      for tensor in list_field(idx, document, ("inputs",), "kservev2")]
            self._names.append([str(tensor.get("name", "")) for tensor in inputs])
            request_id = document.get("id")
            self._ids.append(request_id if isinstance(request_id, str) and request_id.strip()
                             else None)
            rows.extend(inputs)
        return rows

    def format_output(self, data: list[Any]) -> list[Any]:
        lengths = [len(names) for names in self._names]
        return [self._response(idx, chunk)
                for idx, chunk in enumerate(split_by_lengths(data, lengths))]

    def _response(self, idx: int, results: list[Any]) -> dict[str, Any]:
        model = (getattr(self.context, "manifest", None) or {}).get("model", {})
        names = self._names[idx]
        return {"id": self._ids[idx] or self.context.get_request_id(idx),
                "model_name": model.get("modelName", getattr(self.context, "model_name", None)),
                "model_version": model.get("modelVersion"),
                "outputs": [output_tensor(result, names[i] if i < len(names) else f"output-{i}")
                            for i, result in enumerate(results)]}


def _input_row(idx: int, tensor: Any) -> dict[str, Any]:
    if not isinstance(tensor, dict) or "data" not in tensor:
        raise PredictionException(f"kservev2 envelope: an input of request {idx} is not a "
                                  f"tensor object with \"data\"", 400)
    row = dict(tensor)
    if row.get("datatype") == "BYTES":
        values = row["data"]
        row["data"] = values[0] if isinstance(values, list) and values else values
    elif "shape" in row:
        row["data"] = reshape(flatten(row["data"]), row["shape"], idx, row.get("name"))
    return row


def flatten(value: Any) -> list[Any]:
    """Every leaf of nested lists (and tensors) in order; a scalar or object is one leaf."""
    if isinstance(value, torch.Tensor):
        return value.flatten().tolist()
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in flatten(item)]
    return [value]


def reshape(flat: list[Any], shape: Any, idx: int, name: Any) -> Any:
    """``flat`` nested to ``shape`` (one dimension may be -1); a 400 when it does not fit."""
    dims = _resolved_shape(len(flat), shape)
    if dims is None:
        raise PredictionException(f"kservev2 envelope: input {name!r} of request {idx} has "
                                  f"{len(flat)} values, which do not fit shape {shape}", 400)
    return _nest(flat, dims)


def _resolved_shape(count: int, shape: Any) -> list[int] | None:
    if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
        return None
    known = math.prod(d for d in shape if d != -1)
    unknown = shape.count(-1)
    if unknown > 1 or any(d < -1 for d in shape) or (unknown and (known == 0 or count % known)):
        return None
    dims = [count // known if d == -1 else d for d in shape]
    return dims if math.prod(dims) == count else None


def _nest(flat: list[Any], dims: list[int]) -> Any:
    if not dims:
        return flat[0]
    if len(dims) == 1:
        return flat
    step = math.prod(dims[1:])
    return [_nest(flat[i * step:(i + 1) * step], dims[1:]) for i in range(dims[0])]


def output_tensor(result: Any, name: str) -> dict[str, Any]:
    """One handler result as a flattened v2 output tensor."""
    data = flatten(result)
    datatype = (_TORCH_DATATYPES.get(result.dtype, "BYTES") if isinstance(result, torch.Tensor)
                else datatype_of(data))
    return {"name": name, "datatype": datatype, "data": data, "shape": [len(data)]}


def datatype_of(values: list[Any]) -> str:
    """The v2 datatype numpy would give these Python values (BYTES for anything else)."""
    if all(isinstance(v, bool) for v in values) and values:
        return "BOOL"
    if all(isinstance(v, (bool, int)) for v in values) and values:
        return "INT64"
    if all(isinstance(v, (bool, int, float)) for v in values):
        return "FP64"
    return "BYTES"
