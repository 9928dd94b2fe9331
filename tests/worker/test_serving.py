"""Real workers load real archives (three formats) and answer batches."""
from __future__ import annotations

import json

import pytest

from protocol import messages
from tests.worker.conftest import FORMATS
from tests.support.waiting import wait_until
from tests.worker.harness import json_request


def body_of(response: dict) -> object:
    assert not response["error"], response
    return json.loads(response["body"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_module_level_handler(loaded, fmt):
    worker = loaded("noop", fmt)
    parts, result = worker.predict([json_request("r1", {"x": 1})])
    assert parts == []
    [response] = result["responses"]
    assert response["id"] == "r1"
    assert response["status"] == 200
    assert response["body"] == json.dumps({"ok": 1}, indent=2).encode()
    assert response["content_type"] is None


@pytest.mark.parametrize("fmt", FORMATS)
def test_class_handler_sees_decoded_inputs_and_context(loaded, store, fmt):
    model_dir = store.model_dir("echo", fmt)
    worker = loaded("echo", fmt, batch_size=4, yaml_config={"minWorkers": 1, "handler": {"k": 2}})
    requests = [
        json_request("a", {"n": 1}, headers=[["X-Test", "yes"]]),
        messages.request("b", [["content-type", "text/plain"]], [
            messages.parameter("body", "text/plain; charset=utf-8", "héllo".encode()),
            messages.parameter("raw", "application/octet-stream", b"\x00\xff"),
            messages.parameter("bad", "application/json", b"{not json"),
        ]),
    ]
    _, result = worker.predict(requests)
    first, second = (body_of(r) for r in result["responses"])
    assert first["params"] == {"body": {"type": "dict", "value": {"n": 1}}}
    assert first["headers"] == {"x-test": "yes", "X-Test": "yes",
                                "content-type": "application/json"}
    assert second["params"] == {
        "body": {"type": "str", "value": "héllo"},
        "raw": {"type": "bytearray", "hex": "00ff"},
        "bad": {"type": "bytearray", "hex": b"{not json".hex()},
    }
    assert first["batch_size"] == second["batch_size"] == 2
    assert (first["request_id"], second["request_id"]) == ("a", "b")
    assert first["request_ids"] == {"0": "a", "1": "b"}
    assert first["system_properties"] == {
        "model_dir": str(model_dir), "gpu_id": None, "batch_size": 4, "server_name": "torchd",
        "server_version": "0.1.0-test", "limit_max_image_pixels": True, "ipex_enable": False}
    assert first["model_name"] == "echo"
    assert first["manifest_model"]["handler"] == "handler.py"
    assert first["model_yaml_config"] == {"minWorkers": 1, "handler": {"k": 2}}
    assert first["cwd"] == str(model_dir)
    assert first["context_is_ts_context"] is True
    assert first["initialized"] is True


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("model", ["mlp_eager", "mlp_script"])
def test_base_handler_models(loaded, store, model, fmt):
    worker = loaded(model, fmt, batch_size=2)
    expected = store.expected(model)
    rows, outputs = expected["inputs"], expected["outputs"]
    _, result = worker.predict([json_request("one", {"data": rows[0]}),
                                json_request("many", rows)])
    one, many = (body_of(r) for r in result["responses"])
    if model == "mlp_script":  # its handler wraps each row
        assert [row["argmax"] for row in many] == [
            max(range(3), key=row.__getitem__) for row in outputs]
        one, many = one["logits"], [row["logits"] for row in many]
    assert one == pytest.approx(outputs[0], abs=1e-5)
    assert many == [pytest.approx(row, abs=1e-5) for row in outputs]


@pytest.mark.parametrize("model", ["noop", "mlp_script"])
def test_exec_spawned_worker_serves(loaded, model):
    worker = loaded(model, mode="exec")
    _, result = worker.predict([json_request("r", [1.0, 2.0, 3.0, 4.0])])
    assert result["responses"][0]["status"] == 200


@pytest.mark.parametrize("handler", ["handler:handle", "{dir}/handler.py", "handler"])
def test_handler_string_forms(spawn, store, handler):
    model_dir = store.model_dir("noop")
    worker = spawn()
    answer = worker.load(model_dir, handler=handler.format(dir=model_dir))
    assert answer["ok"], answer
    _, result = worker.predict([json_request("r", {})])
    assert body_of(result["responses"][0]) == {"ok": 1}


def test_streaming_parts_arrive_in_order_before_result(loaded):
    worker = loaded("stream", batch_size=2)
    parts, result = worker.predict([json_request("a", {}), json_request("b", {})])
    assert [(p["id"], p["body"]) for p in parts] == [
        (rid, f"part {n}".encode()) for n in range(3) for rid in ("a", "b")]
    assert all(p["status"] == 200 for p in parts)
    assert all(p["reason"] == "Intermediate Prediction success" for p in parts)
    assert [(r["id"], r["body"]) for r in result["responses"]] == [
        ("a", b"final"), ("b", b"final")]


def test_status_headers_and_content_type(loaded):
    worker = loaded("status")
    _, result = worker.predict([json_request("r", {})])
    [response] = result["responses"]
    assert response["status"] == 201
    assert response["reason"] == "Created"
    assert response["headers"] == [["X-Custom", "yes"]]
    assert response["content_type"] == "text/plain"
    assert response["body"] == b"made"


def test_describe_handle(loaded):
    worker = loaded("describe")
    described = worker.describe()
    assert described["ok"] is True
    assert json.loads(described["result"]) == {"hello": "world", "model": "describe"}


def test_describe_without_describe_handle_is_empty(loaded):
    assert loaded("noop").describe() == messages.described(True, "")


def test_base_handler_describe_is_empty(loaded):
    assert loaded("mlp_eager").describe() == messages.described(True, "")


def test_output_is_prefixed_with_worker_id(loaded, session_daemon):
    worker = loaded("echo")
    worker.predict([json_request("r", {})])
    expected = f"[worker {worker.worker_id}] echo handler initialized for echo"
    wait_until(lambda: expected in session_daemon.log(), 10,   # a pump thread forwards them
               what=lambda: f"{expected!r} in {session_daemon.log()!r}")
    log = session_daemon.log()
    assert f"[worker {worker.worker_id}] " in log and "INFO worker.service: model echo loaded" \
        in log
