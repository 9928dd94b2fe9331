"""SageMaker's /invocations and /models/{m}/invoke, KServe v1's model list and readiness,
OIP v2 explain and Multi Model Server's /{m}/predict, through the real daemon with real workers
(probe handler: it answers which model and version served it, and whether it saw
`explain: True`)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.archives import build_archive
from tests.support.daemon import Daemon, running_daemon
from tests.support.layout import torchserve_layout

pytestmark = pytest.mark.timeout(180)
BODY = {"color": "blue"}


@pytest.fixture(scope="module")
def probe_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alpha.mar, beta.mar (1.0) and beta_v2.mar (beta 2.0), gamma.mar: one probe handler."""
    out = tmp_path_factory.mktemp("probe-archives")
    for name in ("alpha", "beta", "gamma"):
        build_archive("probe", out, name=name)
    second = build_archive("probe", tmp_path_factory.mktemp("probe-v2"), name="beta",
                           version="2.0")
    shutil.copy(second, out / "beta_v2.mar")
    return out


@pytest.fixture(scope="module")
def daemon(probe_store: Path, tmp_path_factory: pytest.TempPathFactory):
    """alpha (1 worker), beta 1.0 (default) and 2.0 (1 worker each), gamma (0 workers)."""
    with running_daemon(probe_store, tmp_path_factory.mktemp("compat")) as d:
        for url, workers in (("alpha.mar", 1), ("beta.mar", 1), ("beta_v2.mar", 1),
                             ("gamma.mar", 0)):
            response = d.register(url, initial_workers=workers)
            assert response.status_code == 200, response.text
        yield d


def served_by(response) -> tuple[str, str, str | None]:
    assert response.status_code == 200, response.text
    body = response.json()
    return body["model"], body["version"], body["explain"]


def assert_error(response, status: int, kind: str, message: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"code": status, "type": kind, "message": message}
    assert response.content == torchserve_layout(response.json())


def test_invocations_without_a_name_among_several_models_is_a_400_naming_them(daemon) -> None:
    response = daemon.infer("POST", "/invocations", json=BODY)
    assert_error(response, 400, "BadRequestException",
                 "Parameter model_name is required: 3 models are registered (alpha, beta, "
                 "gamma); name one with ?model_name=, the X-Amzn-SageMaker-Target-Model "
                 "header or a model_name form field.")
    assert served_by(daemon.infer("POST", "/invocations?model_name=alpha", json=BODY)) == (
        "alpha", "1.0", None)   # still serving


def test_invocations_by_a_model_name_form_field(daemon) -> None:
    """TorchServe reads model_name from a form body when nothing else names the model."""
    form = {"model_name": (None, "beta"), "data": (None, '{"color": "red"}')}
    assert served_by(daemon.infer("POST", "/invocations", files=form)) == ("beta", "1.0", None)
    urlencoded = daemon.infer("POST", "/invocations", data={"model_name": "alpha"})
    assert served_by(urlencoded)[0] == "alpha"
    named = daemon.infer("POST", "/invocations?model_name=alpha", files=form)
    assert served_by(named)[0] == "alpha"   # the query parameter wins, as over the header
    nameless = daemon.infer("POST", "/invocations", files={"data": (None, "{}")})
    assert nameless.status_code == 400 and "model_name form field" in nameless.json()["message"]


def test_invocations_by_query_parameter_and_by_target_header(daemon) -> None:
    assert served_by(daemon.infer("POST", "/invocations", params={"model_name": "beta"},
                                  json=BODY)) == ("beta", "1.0", None)
    for target in ("beta", "beta.tar.gz", "beta.mar"):
        headers = {"X-Amzn-SageMaker-Target-Model": target}
        assert served_by(daemon.infer("POST", "/invocations", headers=headers,
                                      json=BODY)) == ("beta", "1.0", None)
    both = daemon.infer("POST", "/invocations?model_name=alpha", json=BODY,
                        headers={"X-Amzn-SageMaker-Target-Model": "beta"})
    assert served_by(both)[0] == "alpha"   # the query parameter wins


def test_invocations_of_unknown_or_workerless_models(daemon) -> None:
    assert_error(daemon.infer("POST", "/invocations?model_name=nope", json=BODY), 404,
                 "ModelNotFoundException", "Model not found: nope")
    assert_error(daemon.infer("POST", "/invocations", json=BODY,
                              headers={"X-Amzn-SageMaker-Target-Model": "nope.tar.gz"}),
                 404, "ModelNotFoundException", "Model not found: nope.tar.gz")
    assert_error(daemon.infer("POST", "/invocations?model_name=gamma", json=BODY), 503,
                 "ServiceUnavailableException", 'Model "gamma" has no worker to serve '
                 "inference request. Please use scale workers API to add workers.")
    assert_error(daemon.infer("GET", "/invocations"), 405, "MethodNotAllowedException",
                 "Requested method is not allowed, please refer to API document.")


def test_models_invoke(daemon) -> None:
    assert served_by(daemon.infer("POST", "/models/beta/invoke", json=BODY)) == (
        "beta", "1.0", None)
    assert served_by(daemon.infer("POST", "/models/alpha/invoke/", json=BODY))[0] == "alpha"
    assert_error(daemon.infer("POST", "/models/nope/invoke", json=BODY), 404,
                 "ModelNotFoundException", "Model not found: nope")
    assert_error(daemon.infer("GET", "/models/alpha/invoke"), 405, "MethodNotAllowedException",
                 "Requested method is not allowed, please refer to API document.")


def test_multi_model_servers_predict_paths(daemon) -> None:
    """/{m}/predict and /{m}/{v}/predict, any method, as TorchServe still answers them."""
    assert served_by(daemon.infer("POST", "/beta/predict", json=BODY)) == ("beta", "1.0", None)
    assert served_by(daemon.infer("PUT", "/beta/2.0/predict", json=BODY)) == (
        "beta", "2.0", None)
    assert served_by(daemon.infer("GET", "/alpha/predict/"))[0] == "alpha"
    assert_error(daemon.infer("POST", "/nope/predict", json=BODY), 404,
                 "ModelNotFoundException", "Model not found: nope")
    assert_error(daemon.infer("POST", "/beta/9.9/predict", json=BODY), 404,
                 "ModelVersionNotFoundException",
                 "Model version: 9.9 does not exist for model: beta")
    # the other routes keep their paths: a model named "predictions" is not reached this way
    assert_error(daemon.infer("POST", "/predictions/predict", json=BODY), 404,
                 "ModelNotFoundException", "Model not found: predict")
    assert daemon.infer("GET", "/ping").json() == {"status": "Healthy"}


def test_kserve_v1_model_list_and_readiness(daemon) -> None:
    listed = daemon.infer("GET", "/v1/models")
    assert listed.status_code == 200
    assert listed.json()["models"] == ["alpha", "beta", "gamma"]   # OpenAI's list beside it
    ready = daemon.infer("GET", "/v1/models/alpha")
    assert ready.json() == {"name": "alpha", "ready": True}
    assert ready.content == torchserve_layout(ready.json())
    not_ready = daemon.infer("GET", "/v1/models/gamma")
    assert (not_ready.status_code, not_ready.json()) == (200, {"name": "gamma", "ready": False})
    assert_error(daemon.infer("GET", "/v1/models/nope"), 404, "ModelNotFoundException",
                 "Model not found: nope")
    assert_error(daemon.infer("GET", "/v1/models/alpha:predict"), 405,
                 "MethodNotAllowedException",
                 "Requested method is not allowed, please refer to API document.")
    assert served_by(daemon.infer("POST", "/v1/models/alpha:predict", json=BODY))[0] == "alpha"
    # TorchServe answers the readiness on its management port: so does torchd
    assert daemon.mgmt("GET", "/v1/models/gamma").json() == {"name": "gamma", "ready": False}
    assert_error(daemon.mgmt("GET", "/v1/models/nope"), 404, "ModelNotFoundException",
                 "Model not found: nope")


def test_v2_explain_with_and_without_a_version(daemon) -> None:
    response = daemon.infer("POST", "/v2/models/alpha/explain", json=BODY)
    assert response.headers["content-type"] == "application/json"
    assert served_by(response) == ("alpha", "1.0", "True")
    assert served_by(daemon.infer("POST", "/v2/models/beta/versions/2.0/explain",
                                  json=BODY)) == ("beta", "2.0", "True")
    assert served_by(daemon.infer("POST", "/v2/models/beta/explain", json=BODY)) == (
        "beta", "1.0", "True")
    missing = daemon.infer("POST", "/v2/models/nope/explain", json=BODY)
    assert (missing.status_code, missing.json()) == (404, {"error": "Model not found: nope"})
    version = daemon.infer("POST", "/v2/models/beta/versions/9.9/explain", json=BODY)
    assert (version.status_code, version.json()) == (
        404, {"error": "Model version: 9.9 does not exist for model: beta"})


def test_invocations_with_one_model_or_none(probe_store: Path, tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "one", probe_store)
    try:
        daemon.start()
        assert_error(daemon.infer("POST", "/invocations", json=BODY), 400,
                     "BadRequestException",
                     "Parameter model_name is required. No model is registered.")
        assert daemon.register("beta.mar", initial_workers=1).status_code == 200
        assert daemon.register("beta_v2.mar", initial_workers=1).status_code == 200
        # one model (two versions): its default version
        assert served_by(daemon.infer("POST", "/invocations", json=BODY)) == (
            "beta", "1.0", None)
        assert daemon.mgmt("PUT", "/models/beta/2.0/set-default").status_code == 200
        assert served_by(daemon.infer("POST", "/invocations", json=BODY)) == (
            "beta", "2.0", None)
    finally:
        daemon.cleanup()
