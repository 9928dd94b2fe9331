"""Request envelopes in-process: what the handler sees and what each request gets back."""
from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import torch

from worker.ts.context import Context
from worker.ts.torch_handler.request_envelope.body import BodyEnvelope
from worker.ts.torch_handler.request_envelope.json import JSONEnvelope
from worker.ts.torch_handler.request_envelope.kserve import KServeEnvelope
from worker.ts.torch_handler.request_envelope.kservev2 import KServev2Envelope, output_tensor
from worker.ts.utils.util import PredictionException

MANIFEST = {"model": {"modelName": "m", "modelVersion": "2.0"}}


def context(count: int, headers: list[dict[str, str]] | None = None) -> Context:
    ctx = Context("m", "/tmp", MANIFEST, count, None, "0")
    ctx.begin_batch([f"rid-{i}" for i in range(count)], headers or [{}] * count)
    return ctx


class Recorder:
    """A handler that records its rows and answers each with ``answer(row)``."""

    def __init__(self, answer: Any = lambda row: row) -> None:
        self.answer = answer
        self.seen: list[Any] = []

    def __call__(self, data: Any, ctx: Any) -> Any:
        self.seen = data
        return [self.answer(row) for row in data] if data else data


def run(envelope_class: type, rows: list[Any], handler: Recorder,
        headers: list[dict[str, str]] | None = None) -> list[Any]:
    return envelope_class(handler).handle(rows, context(len(rows), headers))


def test_json_envelope_joins_instances_and_splits_predictions():
    handler = Recorder(lambda row: sorted(row) if isinstance(row, dict) else repr(row))
    rows = [{"body": {"instances": [[1, 2], [3, 4]]}},
            {"body": bytearray(b'{"instances": [{"b64": "aGk="}, {"img": {"b64": "eW8="}}]}')}]
    answers = run(JSONEnvelope, rows, handler)
    assert handler.seen == [[1, 2], [3, 4], b"hi", {"img": b"yo"}]
    # TorchServe's JSON envelope answers JSON text
    assert answers == ['{"predictions": ["[1, 2]", "[3, 4]"]}',
                       '{"predictions": ["b\'hi\'", ["img"]]}']


def test_json_envelope_reads_a_bare_document():
    handler = Recorder(lambda row: row * 2)
    assert run(JSONEnvelope, [{"instances": [1, 2]}], handler) == ['{"predictions": [2, 4]}']


def test_body_envelope_hands_over_bare_values():
    handler = Recorder(lambda row: len(row))
    rows = [{"data": bytearray(b"abc")}, {"body": "hello"}]
    assert run(BodyEnvelope, rows, handler) == [3, 5]
    assert handler.seen == [bytearray(b"abc"), "hello"]


def test_kserve_envelope_predictions_and_explanations():
    handler = Recorder(lambda row: sum(row))
    rows = [{"body": {"instances": [[1, 2], [3]]}}, {"body": b'{"inputs": [[5]]}'}]
    answers = run(KServeEnvelope, rows, handler, headers=[{}, {"explain": "True"}])
    assert handler.seen == [[1, 2], [3], [5]]
    assert answers == [{"predictions": [3, 3]}, {"explanations": [5]}]


@pytest.mark.parametrize(("envelope", "row", "message"), [
    (JSONEnvelope, {"body": {"rows": []}}, 'json envelope: request 0 has no "instances"'),
    (JSONEnvelope, {"body": bytearray(b"{nope")}, "json envelope: request 0 is not JSON"),
    (KServeEnvelope, {"body": [1, 2]}, "kserve envelope: request 0 is not a JSON object"),
    (KServeEnvelope, {"body": {"instances": 3}}, '"instances" of request 0 is not a list'),
    (KServev2Envelope, {"body": {"instances": []}}, 'kservev2 envelope: request 0 has no "inputs"'),
    (KServev2Envelope, {"body": {"inputs": [{"name": "x", "shape": [3], "data": [1, 2]}]}},
     "input 'x' of request 0 has 2 values, which do not fit shape [3]"),
    (KServev2Envelope, {"body": {"inputs": [7]}}, "is not a tensor object"),
])
def test_malformed_requests_are_the_clients_error(envelope, row, message):
    with pytest.raises(PredictionException) as caught:
        run(envelope, [row], Recorder())
    assert caught.value.error_code == 400
    assert message in caught.value.message


def test_kservev2_envelope_rows_and_response():
    handler = Recorder(lambda row: [[v * 2 for v in r] for r in row["data"]]
                       if row["datatype"] != "BYTES" else row["data"].upper())
    body = {"id": "req-7", "inputs": [
        {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]},
        {"name": "s", "shape": [1], "datatype": "BYTES", "data": ["abc"]}]}
    second = {"inputs": [{"name": "y", "shape": [1, -1], "datatype": "INT64",
                          "data": [[5, 6]]}]}
    answers = run(KServev2Envelope, [{"body": body}, {"body": json.dumps(second).encode()}],
                  handler)
    assert handler.seen[0]["data"] == [[1, 2], [3, 4]] and handler.seen[1]["data"] == "abc"
    assert handler.seen[2]["data"] == [[5, 6]]
    assert answers == [
        {"id": "req-7", "model_name": "m", "model_version": "2.0", "outputs": [
            {"name": "x", "datatype": "INT64", "data": [2, 4, 6, 8], "shape": [4]},
            {"name": "s", "datatype": "BYTES", "data": ["ABC"], "shape": [1]}]},
        {"id": "rid-1", "model_name": "m", "model_version": "2.0", "outputs": [
            {"name": "y", "datatype": "INT64", "data": [10, 12], "shape": [2]}]}]


@pytest.mark.parametrize(("result", "datatype", "data"), [
    ([0.5, 1], "FP64", [0.5, 1]),
    ([[1, 2], [3, 4]], "INT64", [1, 2, 3, 4]),
    ([True, False], "BOOL", [True, False]),
    ({"cat": 0.9}, "BYTES", [{"cat": 0.9}]),
    ("text", "BYTES", ["text"]),
    ([], "FP64", []),
    (torch.tensor([[1.5, 2.5]]), "FP32", [1.5, 2.5]),
    (torch.tensor([1, 2], dtype=torch.int32), "INT32", [1, 2]),
])
def test_kservev2_output_tensors_flatten_with_numpy_datatypes(result, datatype, data):
    assert output_tensor(result, "out") == {"name": "out", "datatype": datatype, "data": data,
                                            "shape": [len(data)]}


def test_envelopes_pass_the_load_call_through():
    # A function handler's load-time call (data None) reaches the handler untouched.
    handler = Recorder()
    assert JSONEnvelope(handler).handle(None, context(1)) is None


def test_an_async_handler_is_formatted_once_it_has_answered():
    async def handler(data: Any, ctx: Any) -> Any:
        return [row * 2 for row in data]

    pending = JSONEnvelope(handler).handle([{"instances": [1, 2]}], context(1))
    assert asyncio.run(pending) == ['{"predictions": [2, 4]}']
