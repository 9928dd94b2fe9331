"""TorchServe's url_path through the real daemon (SPEC 2): ``/predictions/{m}/{v}/{path...}`` and
``/explanations/...`` with any method, the handler seeing the path after the version as its
``url_path`` header ("" on the short forms) beside ``explain``, on both of the inference
listener's paths: the direct path (a plain body, or none) and the ASGI app (a form body, or
``Expect: 100-continue``, which the direct path leaves to it; daemon/http/direct.py). One daemon
for the module."""
from __future__ import annotations

import pytest
import requests

from tests.support.archives import archive_source
from tests.support.daemon import Daemon

# Answers what it was given: its url_path and explain headers and the size of each parameter;
# with ``x-stream``, two parts before its answer.
ECHO_PATH = '''
import json

from ts.handler_utils.utils import send_intermediate_predict_response


def _size(value):
    return len(value) if isinstance(value, (bytes, bytearray, str)) else -1


def handle(data, context):
    if data is None:
        return None
    url_path = context.get_request_header(0, "url_path")
    if context.get_request_header(0, "x-stream"):
        for n in range(2):
            send_intermediate_predict_response([f"part {n} {url_path}|"], context.request_ids,
                                               "Partly Done", 200, context)
        return [f"last {url_path}"]
    return [json.dumps({"url_path": context.get_request_header(idx, "url_path"),
                        "explain": context.get_request_header(idx, "explain"),
                        "params": {name: _size(value) for name, value in row.items()}})
            for idx, row in enumerate(data)]
'''

VIAS = ["direct", "asgi"]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("url-path")
    store = workdir / "store"
    store.mkdir()
    archive_source(ECHO_PATH, "m", store, workdir / "src")
    d = Daemon(workdir, store)
    try:
        d.start()
        assert d.register("m.mar", initial_workers=1).status_code == 200
        yield d
    finally:
        d.cleanup()


def send(d: Daemon, method: str, path: str, via: str, headers: dict | None = None,
         **kwargs) -> requests.Response:
    """``method`` on ``path`` the way that takes ``via``'s path through the listener: a POST
    carries a body (raw bytes, or a form field on the ASGI path), a GET none."""
    headers = dict(headers or {})
    if via == "asgi":
        headers["Expect"] = "100-continue"   # the direct path leaves these to the ASGI app
        if method != "GET":
            kwargs["data"] = {"q": "1"}
    elif method != "GET":
        kwargs["data"] = b"hello"
    return d.infer(method, path, headers=headers, **kwargs)


def answer(response: requests.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def expected_params(method: str, via: str) -> dict:
    if method == "GET":
        return {"body": 0}
    return {"q": 1} if via == "asgi" else {"body": 5}


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("method", ["POST", "GET"])
@pytest.mark.parametrize(("path", "url_path", "explain"), [
    ("/predictions/m/1.0/v1/chat/completions", "v1/chat/completions", "False"),
    ("/predictions/m/1.0/v1/models", "v1/models", "False"),
    ("/predictions/m", "", "False"),
    ("/predictions/m/1.0", "", "False"),
    ("/explanations/m/1.0/a/b", "a/b", "True"),
    ("/explanations/m", "", "True"),
])
def test_the_handler_sees_the_path_after_the_version(daemon, via, method, path, url_path,
                                                     explain):
    got = answer(send(daemon, method, path, via))
    assert got == {"url_path": url_path, "explain": explain,
                   "params": expected_params(method, via)}


@pytest.mark.parametrize("via", VIAS)
def test_put_patch_delete_route_there_too(daemon, via):
    for method in ("PUT", "PATCH", "DELETE"):
        assert answer(send(daemon, method, "/predictions/m/1.0/v1/x", via))["url_path"] == "v1/x"


@pytest.mark.parametrize("via", VIAS)
def test_trailing_slash_and_percent_encoding(daemon, via):
    """``/x/`` is ``/x``; the rest of the path is decoded as every segment is (as TorchServe
    decodes the path before splitting it), so %2F is a slash in url_path; empty segments
    inside it stay."""
    for path, url_path in (("/predictions/m/1.0/v1/models/", "v1/models"),
                           ("/predictions/m/1.0/", ""), ("/predictions/m/", ""),
                           ("/predictions/m/1.0/a%2Fb%20c", "a/b c"),
                           ("/predictions/m/1.0/a//b", "a//b")):
        assert answer(send(daemon, "POST", path, via))["url_path"] == url_path, path


@pytest.mark.parametrize("via", VIAS)
def test_the_client_cannot_send_its_own_url_path_or_explain(daemon, via):
    forged = {"url_path": "v1/forged", "explain": "True"}
    for path, url_path in (("/predictions/m", ""), ("/predictions/m/1.0/v1/models", "v1/models")):
        got = answer(send(daemon, "POST", path, via, headers=forged))
        assert (got["url_path"], got["explain"]) == (url_path, "False"), path


@pytest.mark.parametrize("via", VIAS)
def test_unknown_model_or_version_with_a_path_is_torchserves_404(daemon, via):
    for method in ("POST", "GET"):
        r = send(daemon, method, "/predictions/m/9.9/v1/chat/completions", via)
        assert r.status_code == 404, r.text
        assert r.json() == {"code": 404, "type": "ModelVersionNotFoundException",
                            "message": "Model version: 9.9 does not exist for model: m"}
        r = send(daemon, method, "/explanations/nope/1.0/v1/models", via)
        assert r.status_code == 404, r.text
        assert r.json() == {"code": 404, "type": "ModelNotFoundException",
                            "message": "Model not found: nope"}


@pytest.mark.parametrize("via", VIAS)
def test_an_empty_version_segment_is_not_found(daemon, via):
    r = send(daemon, "POST", "/predictions/m//v1/models", via)
    assert r.status_code == 404 and r.json()["type"] == "ResourceNotFoundException"


def test_head_runs_no_prediction_and_is_answered(daemon):
    """HEAD is not routed to a prediction (405), and, as every HEAD on this port, is answered:
    the ASGI path holds a response's head until its body, which a HEAD answer never has."""
    for path in ("/predictions/m", "/predictions/m/1.0/v1/models"):
        assert daemon.infer("HEAD", path, timeout=10).status_code == 405, path
    assert daemon.infer("HEAD", "/ping", timeout=10).status_code == 200


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("method", ["POST", "GET"])
def test_streaming_through_a_url_path(daemon, via, method):
    r = send(daemon, method, "/predictions/m/1.0/v1/completions", via,
             headers={"x-stream": "1"})
    assert r.status_code == 200, r.text
    assert r.headers["transfer-encoding"] == "chunked"
    assert r.text == "part 0 v1/completions|part 1 v1/completions|last v1/completions"


def test_the_api_description_lists_the_route(daemon):
    for r in (daemon.infer("GET", "/api-description"), daemon.infer("OPTIONS", "/")):
        assert r.status_code == 200
        item = r.json()["paths"]["/predictions/{model_name}/{model_version}/{path}"]
        assert {p["name"] for p in item["parameters"]} == {"model_name", "model_version", "path"}
        assert {"get", "post"} <= set(item)

