"""OIP tensors between gRPC messages and the JSON documents handlers read and write.

A ModelInferRequest becomes the same JSON request document REST's /v2 infer hands a handler
(``{"id", "parameters", "inputs": [{"name", "datatype", "shape", "data"}], "outputs"}``, data
flat, BYTES as text), and the handler's JSON response document becomes a ModelInferResponse with
every output in ``raw_output_contents`` (little-endian values; BYTES as a 4-byte length and the
bytes each), the form tritonclient sends and reads.
"""
from __future__ import annotations

import math
import struct
from typing import Any

from daemon.errors import BadRequest, InternalServerError
from daemon.rpc.generated import grpc_predict_v2_pb2 as pb

# datatype: (struct format, InferTensorContents field)
DATATYPES = {"BOOL": ("?", "bool_contents"), "UINT8": ("B", "uint_contents"),
             "UINT16": ("H", "uint_contents"), "UINT32": ("I", "uint_contents"),
             "UINT64": ("Q", "uint64_contents"), "INT8": ("b", "int_contents"),
             "INT16": ("h", "int_contents"), "INT32": ("i", "int_contents"),
             "INT64": ("q", "int64_contents"), "FP16": ("e", None),
             "FP32": ("f", "fp32_contents"), "FP64": ("d", "fp64_contents"),
             "BYTES": (None, "bytes_contents")}


def request_document(request: pb.ModelInferRequest) -> dict[str, Any]:
    """The JSON request document; BadRequest when the tensors do not add up."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(f"raw_input_contents has {len(raw)} entries for "
                         f"{len(request.inputs)} inputs")
    inputs = [_input(tensor, raw[i] if raw else None) for i, tensor in enumerate(request.inputs)]
    document: dict[str, Any] = {"id": request.id, "inputs": inputs}
    if request.parameters:
        document["parameters"] = parameters_dict(request.parameters)
    if request.outputs:
        document["outputs"] = [{"name": o.name} for o in request.outputs]
    return document


def _input(tensor: Any, raw: bytes | None) -> dict[str, Any]:
    if tensor.datatype not in DATATYPES:
        raise BadRequest(f"Input {tensor.name}: unknown datatype {tensor.datatype!r}")
    count = math.prod(tensor.shape)
    data = _from_raw(tensor, raw, count) if raw is not None else _from_contents(tensor)
    if len(data) != count:
        raise BadRequest(f"Input {tensor.name}: {len(data)} values for shape "
                         f"{list(tensor.shape)}")
    entry = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape),
             "data": data}
    if tensor.parameters:
        entry["parameters"] = parameters_dict(tensor.parameters)
    return entry


def _from_raw(tensor: Any, raw: bytes, count: int) -> list:
    fmt = DATATYPES[tensor.datatype][0]
    if fmt is None:
        return [item.decode("utf-8", "replace") for item in _split_bytes(tensor.name, raw)]
    size = struct.calcsize(fmt)
    if len(raw) != count * size:
        raise BadRequest(f"Input {tensor.name}: {len(raw)} bytes of raw contents for shape "
                         f"{list(tensor.shape)} of {tensor.datatype}")
    return list(struct.unpack(f"<{count}{fmt}", raw))


def _split_bytes(name: str, raw: bytes) -> list[bytes]:
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise BadRequest(f"Input {name}: truncated BYTES element length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise BadRequest(f"Input {name}: truncated BYTES element")
        items.append(raw[offset:offset + size])
        offset += size
    return items


def _from_contents(tensor: Any) -> list:
    field = DATATYPES[tensor.datatype][1]
    if field is None:
        raise BadRequest(f"Input {tensor.name}: {tensor.datatype} needs raw_input_contents")
    values = list(getattr(tensor.contents, field))
    if tensor.datatype == "BYTES":
        return [value.decode("utf-8", "replace") for value in values]
    return values


def response_message(document: Any) -> pb.ModelInferResponse:
    """The handler's JSON response document as a ModelInferResponse."""
    if not isinstance(document, dict) or not isinstance(document.get("outputs"), list):
        raise InternalServerError("The handler's answer is not an OIP response document "
                                  "(a JSON object with \"outputs\")")
    response = pb.ModelInferResponse(model_name=str(document.get("model_name", "")),
                                     model_version=str(document.get("model_version", "")),
                                     id=str(document.get("id", "")))
    _set_parameters(response.parameters, document.get("parameters"))
    for output in document["outputs"]:
        tensor, raw = _output(output)
        response.outputs.append(tensor)
        response.raw_output_contents.append(raw)
    return response


def _output(output: Any) -> tuple[pb.ModelInferResponse.InferOutputTensor, bytes]:
    if not isinstance(output, dict) or output.get("datatype") not in DATATYPES:
        raise InternalServerError(f"The handler's output {output!r:.200} has no known datatype")
    data = _flat(output.get("data", []))
    shape = output.get("shape") or [len(data)]
    tensor = pb.ModelInferResponse.InferOutputTensor(
        name=str(output.get("name", "")), datatype=output["datatype"],
        shape=[int(d) for d in shape])
    _set_parameters(tensor.parameters, output.get("parameters"))
    return tensor, _to_raw(output["datatype"], data)


def _to_raw(datatype: str, data: list) -> bytes:
    fmt = DATATYPES[datatype][0]
    if fmt is not None:
        try:
            return struct.pack(f"<{len(data)}{fmt}", *data)
        except struct.error as exc:
            raise InternalServerError(f"The handler's {datatype} output: {exc}") from None
    items = [v if isinstance(v, bytes) else str(v).encode() for v in data]
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def _flat(value: Any) -> list:
    if isinstance(value, list):
        return [x for item in value for x in _flat(item)]
    return [value]


def parameters_dict(parameters: Any) -> dict[str, Any]:
    return {key: getattr(p, p.WhichOneof("parameter_choice"))
            for key, p in parameters.items() if p.WhichOneof("parameter_choice")}


def _set_parameters(target: Any, values: Any) -> None:
    for key, value in (values or {}).items() if isinstance(values, dict) else ():
        if isinstance(value, bool):
            target[key].bool_param = value
        elif isinstance(value, int):
            target[key].int64_param = value
        elif isinstance(value, float):
            target[key].double_param = value
        else:
            target[key].string_param = str(value)
