"""daemon.http.openai_api: a completion request's body → the model version it names, OpenAI's
error document for every error, and the model list."""
from __future__ import annotations

import json

import pytest

from daemon.errors import (InternalServerError, ModelNotFound, RequestTimeout,
                           ServiceUnavailable, TorchdError)
from daemon.http.openai_api import (OpenAIRequestError, error_type, model_list, model_version,
                                    openai_error, openai_error_document, requested_model,
                                    resolve_model)
from daemon.models.queue import queue_full_error
from daemon.models.registry import Registry
from tests.daemon.models.test_registry import version


def refusal(body: bytes) -> tuple[int, str, str | None]:
    with pytest.raises(OpenAIRequestError) as refused:
        requested_model(body)
    return refused.value.status, refused.value.message, refused.value.param


def test_the_model_a_body_names() -> None:
    assert requested_model(b'{"model": "llm", "prompt": "hi"}') == "llm"
    assert requested_model('{"model": "llm/2.0"}'.encode()) == "llm/2.0"


@pytest.mark.parametrize(("body", "param", "message"), [
    (b"{", None, "The request body is not valid JSON: Expecting property name enclosed in "
                 "double quotes: line 1 column 2 (char 1)"),
    (b"", None, "The request body is not valid JSON: Expecting value: line 1 column 1 "
                "(char 0)"),
    (b"\xff", None, "The request body is not valid JSON: 'utf-8' codec can't decode byte 0xff "
                    "in position 0: invalid start byte"),
    (b"[" * 50000 + b"]" * 50000, None, "The request body is not valid JSON: nested too "
                                        "deeply."),
    (b'"llm"', None, "The request body must be a JSON object."),
    (b'{"prompt": "hi"}', "model", "The request must name its model: `model` is missing."),
    (b'{"model": null}', "model", "The request must name its model: `model` is missing."),
    (b'{"model": ["llm"]}', "model", "`model` must be a model's name (a non-empty string)."),
    (b'{"model": ""}', "model", "`model` must be a model's name (a non-empty string)."),
])
def test_a_body_that_names_no_model_is_a_400(body: bytes, param: str | None,
                                             message: str) -> None:
    assert refusal(body) == (400, message, param)


@pytest.mark.parametrize(("model", "target"), [
    ("llm", ("llm", None)), ("llm/2.0", ("llm", "2.0")), ("llm/v/2", ("llm", "v/2")),
    ("llm/", ("llm/", None)), ("/2.0", ("/2.0", None)),
])
def test_name_slash_version(model: str, target: tuple[str, str | None]) -> None:
    assert model_version(model) == target


def test_a_model_resolves_to_a_registered_version_or_openais_404() -> None:
    registry = Registry()
    registry.add(version("llm", "1.0"))
    registry.add(version("llm", "2.0"))
    assert resolve_model(registry, "llm") == ("llm", None)
    assert resolve_model(registry, "llm/2.0") == ("llm", "2.0")
    for model in ("nope", "llm/3.0", "llm/"):
        with pytest.raises(OpenAIRequestError) as missing:
            resolve_model(registry, model)
        assert openai_error_document(missing.value) == {"error": {
            "message": f"The model `{model}` does not exist.", "type": "invalid_request_error",
            "param": "model", "code": "model_not_found"}}


BAD, FAILED = "invalid_request_error", "server_error"


@pytest.mark.parametrize(("exc", "expected"), [
    (OpenAIRequestError("bad", param="temperature"),
     {"message": "bad", "type": BAD, "param": "temperature", "code": None}),
    (TorchdError("`top_p` must be in (0, 1]", 400),   # the handler's PredictionException
     {"message": "`top_p` must be in (0, 1]", "type": BAD, "param": None, "code": None}),
    (ModelNotFound("Model not found: x"),
     {"message": "Model not found: x", "type": BAD, "param": None, "code": None}),
    (TorchdError("too long", 422), {"message": "too long", "type": BAD, "param": None,
                                    "code": None}),
    (InternalServerError("Worker died."),
     {"message": "Worker died.", "type": FAILED, "param": None, "code": None}),
    (RequestTimeout("slow"), {"message": "slow", "type": FAILED, "param": None, "code": None}),
    (TorchdError("odd", 599), {"message": "odd", "type": FAILED, "param": None, "code": None}),
])
def test_every_error_is_openais_document(exc: TorchdError, expected: dict) -> None:
    assert openai_error_document(exc) == {"error": expected}


def test_the_error_response_keeps_status_and_headers() -> None:
    full = queue_full_error("llm")
    response = openai_error(full)
    assert response.status_code == 503
    assert response.headers["retry-after"] == full.headers["Retry-After"]
    assert json.loads(bytes(response.body)) == {"error": {
        "message": full.message, "type": "server_error", "param": None, "code": None}}
    assert error_type(ServiceUnavailable("x").status) == "server_error"


def test_the_model_list_is_openais_and_kserves() -> None:
    registry = Registry()
    for mv in (version("b"), version("a", "1.0"), version("a", "2.0")):
        mv.registered_at = 1767225600.7
        registry.add(mv)
    assert model_list(registry) == {
        "object": "list",
        "data": [{"id": "a", "object": "model", "created": 1767225600, "owned_by": "torchd"},
                 {"id": "b", "object": "model", "created": 1767225600, "owned_by": "torchd"}],
        "models": ["a", "b"]}
    assert model_list(Registry()) == {"object": "list", "data": [], "models": []}
