"""daemon.http.predict's route matching (HotRoutes): TorchServe's /predictions and /explanations
with any path after the version (``url_path``), matched as starlette's router matches the same
routes, and the extra headers the worker sees."""
from __future__ import annotations

import pytest
from starlette.routing import Match

from daemon.http.compat import compat_prediction_routes
from daemon.http.hot_routes import HotRoutes
from daemon.http.predict import Predictor, prediction_routes, request_headers

PREDICTOR = Predictor(None, 1024)   # type: ignore[arg-type]   # matching never predicts
ROUTES = prediction_routes(PREDICTOR) + compat_prediction_routes(PREDICTOR)
HOT = HotRoutes(None, ROUTES)   # type: ignore[arg-type]


def starlette_match(path: str, method: str) -> dict[str, str] | None:
    """What starlette's router makes of the same request: the full match's path parameters."""
    for route in ROUTES:
        match, child = route.matches({"type": "http", "path": path, "method": method})
        if match is Match.FULL:
            return child["path_params"]
    return None


@pytest.mark.parametrize(("path", "params"), [
    ("/predictions/m", {"model_name": "m"}),
    ("/predictions/m/1.0", {"model_name": "m", "model_version": "1.0"}),
    ("/predictions/llm/1.0/v1/chat/completions",
     {"model_name": "llm", "model_version": "1.0", "url_path": "v1/chat/completions"}),
    ("/predictions/llm/1.0/v1/models",
     {"model_name": "llm", "model_version": "1.0", "url_path": "v1/models"}),
    ("/explanations/m/2/a/b", {"model_name": "m", "model_version": "2", "url_path": "a/b"}),
    ("/predictions/m/1.0/a//b", {"model_name": "m", "model_version": "1.0", "url_path": "a//b"}),
    ("/predictions/m/1.0/a b/c", {"model_name": "m", "model_version": "1.0",
                                  "url_path": "a b/c"}),
])
@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
def test_torchserve_paths_match_any_method_as_starlette_does(path, params, method) -> None:
    found = HOT.match(path, method)
    assert found is not None
    assert found[1] == params == starlette_match(path, method)


@pytest.mark.parametrize("path", ["/predictions", "/predictions//1.0", "/predictions//1.0/x",
                                  "/predictions/m//x", "/predict/m/1.0/x", "/v1/models/m/x"])
def test_other_shapes_are_left_to_the_app(path) -> None:
    assert HOT.match(path, "POST") is None
    assert starlette_match(path, "POST") is None


def test_head_and_wrong_methods_are_left_to_the_app() -> None:
    for method, path in (("HEAD", "/predictions/m"), ("HEAD", "/predictions/m/1.0/v1/models"),
                         ("OPTIONS", "/predictions/m/1.0/x"), ("GET", "/v2/models/m/infer"),
                         ("GET", "/invocations")):
        assert HOT.match(path, method) is None, (method, path)
        assert starlette_match(path, method) is None, (method, path)


def scope(path: str, *headers: tuple[bytes, bytes]) -> dict:
    found = HOT.match(path, "POST")
    assert found is not None
    return {"path_params": found[1], "headers": list(headers), "endpoint": found[0].endpoint}


def test_the_worker_sees_url_path_and_explain_which_the_client_cannot_override() -> None:
    cases = {"/predictions/m": ("", "False"), "/predictions/m/1.0": ("", "False"),
             "/predictions/m/1.0/v1/completions": ("v1/completions", "False"),
             "/explanations/m/1.0/a/b": ("a/b", "True")}
    for path, (url_path, explain) in cases.items():
        s = scope(path, (b"url_path", b"evil"), (b"explain", b"True"), (b"x-a", b"1"))
        name, version, extra = s["endpoint"].target(s)
        assert name == "m" and version == (None if path == "/predictions/m" else "1.0")
        headers = request_headers(s, extra)
        assert [h for h in headers if h[0] == "url_path"] == [["url_path", url_path]], path
        assert [h for h in headers if h[0] == "explain"] == [["explain", explain]], path
        assert ["x-a", "1"] in headers


def test_other_routes_hand_the_headers_on_as_sent() -> None:
    s = scope("/v2/models/m/infer", (b"url_path", b"mine"))
    _, _, extra = s["endpoint"].target(s)
    assert request_headers(s, extra) == [["url_path", "mine"]]
