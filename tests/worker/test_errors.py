"""Handler failures become statuses and never take the worker down; load failures say why."""
from __future__ import annotations

import json

import pytest

from protocol import messages
from tests.worker.harness import json_request, wait_gone
from worker.exits import EXIT_FAILED


def failure(response: dict) -> tuple[int, str]:
    assert response["error"] is True and response["body"] == b"", response
    return response["status"], response["reason"]


def test_prediction_exception_code_then_next_request_succeeds(loaded):
    worker = loaded("fail513", batch_size=2)
    _, result = worker.predict([json_request("a", {"fail": True}), json_request("b", {})])
    assert [failure(r) for r in result["responses"]] == [(513, "bad thing")] * 2
    assert [r["id"] for r in result["responses"]] == ["a", "b"]
    _, result = worker.predict([json_request("c", {"fail": False})])
    [response] = result["responses"]
    assert (response["status"], response["body"], response["error"]) == (200, b"fine", False)


@pytest.mark.parametrize(("model", "expected"), [
    ("fail_plain", (503, "Prediction failed")),
    ("oom", (507, "Out of resources")),
])
def test_exceptions_map_to_statuses_and_worker_stays_up(loaded, model, expected):
    worker = loaded(model)
    for attempt in range(2):
        _, result = worker.predict([json_request(f"r{attempt}", {})])
        assert failure(result["responses"][0]) == expected
    assert worker.describe()["ok"] is True


@pytest.mark.parametrize(("mode", "reason"), [
    ("dict", "Invalid model predict output"),
    ("short", "number of batch response mismatched"),
    ("unserializable", "Prediction failed"),
])
def test_malformed_handler_output(loaded, mode, reason):
    worker = loaded("bad_output", batch_size=2)
    _, result = worker.predict([json_request("a", {"mode": mode}), json_request("b", {})])
    assert [failure(r) for r in result["responses"]] == [(503, reason)] * 2


@pytest.mark.parametrize("mode", ["exec", "zygote"])
def test_load_failure_reports_cause_and_exits_nonzero(spawn, store, zygote, mode):
    worker = spawn(mode)
    answer = worker.load(store.model_dir("fail_load"))
    assert answer["ok"] is False
    assert answer["error"] == "ModuleNotFoundError: No module named 'torchd_no_such_module'"
    if mode == "exec":
        assert worker.process.wait(10) == EXIT_FAILED
    else:
        assert zygote.wait_exit(worker.pid, 10)["returncode"] == EXIT_FAILED


@pytest.mark.parametrize(("model", "handler", "cause"), [
    ("noop", "no_such_handler", "ModuleNotFoundError: No module named 'no_such_handler'"),
    ("noop", "handler:missing", "HandlerLoadError: module handler has no function missing"),
    ("two_classes", None, ("HandlerLoadError: expected a handle() function or exactly one "
                           "class with a handle() method in handler, found 2 classes")),
])
def test_unusable_handlers(spawn, store, model, handler, cause):
    worker = spawn()
    answer = worker.load(store.model_dir(model), handler=handler)
    assert (answer["ok"], answer["error"]) == (False, cause)
    assert wait_gone(worker.pid, 10)


def test_eager_model_without_weights_file_fails_load(spawn, store, tmp_path):
    model_dir = store.model_dir("mlp_eager")
    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    assert manifest["model"]["modelFile"] == "model.py"
    (model_dir / manifest["model"]["serializedFile"]).rename(tmp_path / "weights.pt")
    try:
        answer = spawn().load(model_dir)
    finally:
        (tmp_path / "weights.pt").rename(model_dir / manifest["model"]["serializedFile"])
    assert answer["ok"] is False
    assert answer["error"].startswith("RuntimeError: missing the serialized model file")


def test_base_handler_input_errors_are_client_errors(loaded):
    worker = loaded("mlp_eager", batch_size=2)
    _, result = worker.predict([json_request("a", {"data": ["x", "y"]})])
    assert failure(result["responses"][0]) == (400, "input of request 0 is not a list of numbers")
    _, result = worker.predict([json_request("a", [1.0, 2.0, 3.0, 4.0]),
                                json_request("b", [[1.0, 2.0]])])
    status, reason = failure(result["responses"][1])
    assert status == 400 and reason.startswith("requests in the batch have incompatible")
    _, result = worker.predict([messages.request("c", [], [messages.parameter(
        "body", "application/octet-stream", b"\xff not json")])])
    assert failure(result["responses"][0]) == (400, "request body is not JSON")


def test_base_handler_accepts_other_input_spellings(loaded, store):
    worker = loaded("mlp_eager", batch_size=3)
    rows = store.expected("mlp_eager")["inputs"]
    _, result = worker.predict([
        json_request("instances", {"instances": rows}),
        messages.request("text", [], [messages.parameter("data", "text/plain",
                                                         json.dumps(rows[0]).encode())]),
        messages.request("bytes", [], [messages.parameter("body", None,
                                                          json.dumps(rows).encode())]),
    ])
    outputs = store.expected("mlp_eager")["outputs"]
    answers = [json.loads(r["body"]) for r in result["responses"]]
    assert answers[0] == [pytest.approx(row, abs=1e-5) for row in outputs]
    assert answers[1] == pytest.approx(outputs[0], abs=1e-5)
    assert answers[2] == [pytest.approx(row, abs=1e-5) for row in outputs]


def test_oversized_response_becomes_an_error_and_the_rest_of_the_batch_is_sent(loaded):
    worker = loaded("big", batch_size=3)
    limit = 6553500
    _, result = worker.predict([json_request("small", {"size": 10}),
                                json_request("huge", {"size": limit + 1}),
                                json_request("half", {"size": limit // 2})])
    small, huge, half = result["responses"]
    assert (small["status"], small["body"]) == (200, b"x" * 10)
    reason = f"Response of {limit + 1} bytes exceeds the limit of {limit} bytes"
    assert failure(huge) == (500, reason)
    assert (half["status"], len(half["body"])) == (200, limit // 2)


def test_response_limit_from_load(loaded):
    worker = loaded("big", max_response_size=1000)
    _, result = worker.predict([json_request("r", {"size": 2000})])
    assert failure(result["responses"][0])[0] == 500
    _, result = worker.predict([json_request("r", {"size": 500})])
    assert result["responses"][0]["status"] == 200
