"""Checks of daemon/rpc/tensors.py, run by test_tensors.py in a process of their own: the OIP
messages (package ``inference``) must not enter the test process's protobuf pool, where
tritonclient.grpc defines the same names (tests/integration/test_grpc_oip.py)."""
from __future__ import annotations

import struct

from daemon.errors import BadRequest, InternalServerError
from daemon.rpc.generated import grpc_predict_v2_pb2 as pb
from daemon.rpc.tensors import request_document, response_message


def raises(error: type, text: str, call) -> None:
    try:
        call()
    except error as exc:
        assert text in exc.message, exc.message
        return
    raise AssertionError(f"no {error.__name__}")


def check_contents_and_parameters() -> None:
    request = pb.ModelInferRequest(model_name="m", id="r1")
    request.parameters["flag"].bool_param = True
    a = request.inputs.add(name="a", datatype="FP32", shape=[2])
    a.contents.fp32_contents.extend([1.5, 2.5])
    a.parameters["n"].int64_param = 3
    request.inputs.add(name="b", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"x")
    request.inputs.add(name="c", datatype="INT32", shape=[1, 2]).contents.int_contents.extend(
        [7, -8])
    request.outputs.add(name="out")
    assert request_document(request) == {
        "id": "r1", "parameters": {"flag": True}, "outputs": [{"name": "out"}],
        "inputs": [{"name": "a", "datatype": "FP32", "shape": [2], "data": [1.5, 2.5],
                    "parameters": {"n": 3}},
                   {"name": "b", "datatype": "BYTES", "shape": [1], "data": ["x"]},
                   {"name": "c", "datatype": "INT32", "shape": [1, 2], "data": [7, -8]}]}


def check_raw_contents() -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="h", datatype="FP16", shape=[2])
    request.inputs.add(name="s", datatype="BYTES", shape=[2])
    request.raw_input_contents.append(struct.pack("<2e", 0.5, -1.0))
    request.raw_input_contents.append(struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0))
    data = [i["data"] for i in request_document(request)["inputs"]]
    assert data == [[0.5, -1.0], ["ab", ""]]


def check_bad_requests() -> None:
    def one(datatype: str, shape: list[int], raw: bytes | None = None) -> pb.ModelInferRequest:
        request = pb.ModelInferRequest()
        request.inputs.add(name="x", datatype=datatype, shape=shape)
        if raw is not None:
            request.raw_input_contents.append(raw)
        return request
    raises(BadRequest, "unknown datatype 'FP8'", lambda: request_document(one("FP8", [1])))
    raises(BadRequest, "0 values for shape [2]", lambda: request_document(one("FP32", [2])))
    raises(BadRequest, "4 bytes of raw contents", lambda: request_document(
        one("FP64", [1], b"\0" * 4)))
    raises(BadRequest, "truncated BYTES element", lambda: request_document(
        one("BYTES", [1], struct.pack("<I", 9) + b"ab")))
    raises(BadRequest, "FP16 needs raw_input_contents", lambda: request_document(
        one("FP16", [0])))
    two = one("FP32", [1], b"\0" * 4)
    two.inputs.add(name="y", datatype="FP32", shape=[1])
    raises(BadRequest, "1 entries for 2 inputs", lambda: request_document(two))


def check_responses() -> None:
    response = response_message({
        "model_name": "m", "model_version": "1.0", "id": "r1", "parameters": {"t": 0.5},
        "outputs": [{"name": "o", "datatype": "INT64", "shape": [2, 1], "data": [[1], [2]]},
                    {"name": "s", "datatype": "BYTES", "data": ["é", 3]}]})
    assert (response.model_name, response.id, response.parameters["t"].double_param) == (
        "m", "r1", 0.5)
    assert [list(o.shape) for o in response.outputs] == [[2, 1], [2]]
    assert response.raw_output_contents[0] == struct.pack("<2q", 1, 2)
    assert response.raw_output_contents[1] == (struct.pack("<I", 2) + "é".encode()
                                               + struct.pack("<I", 1) + b"3")
    raises(InternalServerError, "not an OIP response document", lambda: response_message([1]))
    raises(InternalServerError, "no known datatype", lambda: response_message(
        {"outputs": [{"name": "o", "datatype": "NOPE", "data": []}]}))
    raises(InternalServerError, "The handler's FP32 output", lambda: response_message(
        {"outputs": [{"name": "o", "datatype": "FP32", "data": ["a"]}]}))


if __name__ == "__main__":
    for check in (check_contents_and_parameters, check_raw_contents, check_bad_requests,
                  check_responses):
        check()
    print("tensors: ok")
