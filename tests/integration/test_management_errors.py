"""Management API (SPEC 1.3-1.7) through the real daemon: the HTTP conventions (trailing slashes,
unknown paths, wrong methods, bad parameters that change nothing) and the errors of scale,
describe, unregister and set-default in TorchServe's wording; the documented twins of /ping and
the predictions; 206 when only some workers start. Fixtures and helpers come from
tests/support/management.py (its own daemon here)."""
from __future__ import annotations

import requests

from tests.support import management as base
from tests.support.archives import build_archive
from tests.support.daemon import Daemon
from tests.support.management import (
    assert_error,
    assert_status,
    post_models,
    request_id_ok,
    stable,
)

# The daemon, recording server and cleanup of tests/support/management.py (this module's own).
served, recorder, mgmt, clean = base.served, base.recorder, base.mgmt, base.clean


# ---- HTTP conventions -------------------------------------------------------------------------

def test_trailing_slash_unknown_path_wrong_method(mgmt: Daemon) -> None:
    assert post_models(mgmt, url="noop.mar", model_name="slash").status_code == 200
    r = mgmt.mgmt("GET", "/models/")
    assert r.status_code == 200 and r.json()["models"][0]["modelName"] == "slash"
    assert r.reason == "OK"   # hypercorn's status lines carry the standard phrase
    request_id_ok(r)
    assert mgmt.mgmt("GET", "/models/slash/").json()[0]["modelName"] == "slash"
    assert mgmt.mgmt("GET", "/models/slash/1.0/").json()[0]["modelVersion"] == "1.0"
    assert mgmt.mgmt("PUT", "/models/slash/1.0/set-default/").status_code == 200
    not_found = "Requested resource is not found, please refer to API document."
    not_allowed = "Requested method is not allowed, please refer to API document."
    for method, path in (("GET", "/nothing"), ("GET", "/models/slash/1.0/set-default/x"),
                         ("GET", "/predictions/slash")):
        assert_error(mgmt.mgmt(method, path), 404, "ResourceNotFoundException", not_found)
    assert mgmt.mgmt("GET", "/nothing").reason == "Not Found"
    for method, path in (("PATCH", "/models"), ("DELETE", "/models"), ("POST", "/models/slash"),
                         ("GET", "/models/slash/1.0/set-default"), ("GET", "/"), ("POST", "/"),
                         ("PUT", "/api-description")):
        assert_error(mgmt.mgmt(method, path), 405, "MethodNotAllowedException", not_allowed)
    assert_error(mgmt.infer("GET", "/nothing"), 404, "ResourceNotFoundException", not_found)
    ids = {mgmt.mgmt("GET", "/models").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3


def test_bad_parameters_change_nothing(mgmt: Daemon) -> None:
    assert post_models(mgmt, url="noop.mar", model_name="steady", initial_workers=1,
                       synchronous="true").status_code == 200
    before = stable(mgmt.describe("steady", "all"))
    listed = mgmt.mgmt("GET", "/models").json()
    bad = [("PUT", "/models/steady", {"min_worker": -1}),
           ("PUT", "/models/steady", {"min_worker": 3, "max_worker": 2}),
           ("PUT", "/models/steady", {"min_worker": 1, "max_worker": 1000}),
           ("PUT", "/models/steady", {"max_worker": -5}),
           ("PUT", "/models/steady/9.9", {"min_worker": 2}),
           ("PUT", "/models/steady/9.9/set-default", {}),
           ("DELETE", "/models/steady/9.9", {}),
           ("GET", "/models/steady/9.9", {}),
           ("POST", "/models", {"url": "noop.mar", "model_name": "steady"}),
           ("POST", "/models", {"url": "noop.mar", "model_name": "steady", "runtime": "java"}),
           ("POST", "/models", {"url": "noop.mar", "model_name": "steady2",
                                "initial_workers": 500}),
           ("POST", "/models", {"url": "nothere.mar"}),
           ("POST", "/models", {"url": "bad_manifest.mar"})]
    for method, path, params in bad:
        r = mgmt.mgmt(method, path, params=params)
        assert 400 <= r.status_code < 500, (method, path, params, r.text)
        request_id_ok(r)
    assert stable(mgmt.describe("steady", "all")) == before
    assert mgmt.mgmt("GET", "/models").json() == listed
    assert mgmt.infer("POST", "/predictions/steady").json() == {"ok": 1}


# ---- errors of scale, describe, unregister, set-default (SPEC 1.3-1.7) ------------------------

MODEL_NOT_FOUND, VERSION_NOT_FOUND = "ModelNotFoundException", "ModelVersionNotFoundException"


def test_unknown_model_everywhere(mgmt: Daemon) -> None:
    calls = [("PUT", "/models/ghost"), ("PUT", "/models/ghost/1.0"), ("GET", "/models/ghost"),
             ("GET", "/models/ghost/1.0"), ("GET", "/models/ghost/all"),
             ("DELETE", "/models/ghost"), ("DELETE", "/models/ghost/1.0"),
             ("PUT", "/models/ghost/1.0/set-default")]
    for method, path in calls:
        assert_error(mgmt.mgmt(method, path), 404, MODEL_NOT_FOUND, "Model not found: ghost")


def test_unknown_version_wordings(mgmt: Daemon) -> None:
    assert post_models(mgmt, url="noop.mar", model_name="known").status_code == 200
    colons = "Model version: 9.9 does not exist for model: known"
    for method, path in (("PUT", "/models/known/9.9"), ("GET", "/models/known/9.9"),
                         ("DELETE", "/models/known/9.9")):
        assert_error(mgmt.mgmt(method, path), 404, VERSION_NOT_FOUND, colons)
    assert_error(mgmt.mgmt("PUT", "/models/known/9.9/set-default"), 404, VERSION_NOT_FOUND,
                 "Model version 9.9 does not exist for model known")


def test_default_version_cannot_be_removed_while_others_exist(mgmt: Daemon) -> None:
    assert post_models(mgmt, url="noop.mar", model_name="dflt").status_code == 200
    assert post_models(mgmt, url="noop_2.mar", model_name="dflt").status_code == 200
    for path in ("/models/dflt", "/models/dflt/1.0"):
        r = mgmt.mgmt("DELETE", path)
        assert_error(r, 403, "InvalidModelVersionException",
                     "Cannot remove default version for model dflt")
    assert [m["modelVersion"] for m in mgmt.describe("dflt", "all")] == ["1.0", "2.0"]
    assert_status(mgmt.mgmt("DELETE", "/models/dflt/2.0"), 200, 'Model "dflt" unregistered')
    assert_status(mgmt.mgmt("DELETE", "/models/dflt/1.0"), 200, 'Model "dflt" unregistered')


def test_scale_parameter_errors_in_torchserve_order(mgmt: Daemon) -> None:
    assert post_models(mgmt, url="noop.mar", model_name="sc", initial_workers=1).status_code == 200
    less = "max_worker cannot be less than min_worker."
    negative = "min_worker and max_worker must not be negative."
    for path in ("/models/sc", "/models/sc/1.0", "/models/ghost", "/models/sc/9.9"):
        # TorchServe checks the numbers before it looks the model up.
        assert_error(mgmt.mgmt("PUT", path, params={"min_worker": 3, "max_worker": 2}), 400,
                     "BadRequestException", less)
        assert_error(mgmt.mgmt("PUT", path, params={"min_worker": 2, "max_worker": -1}), 400,
                     "BadRequestException", less)
        for params in ({"min_worker": -1}, {"min_worker": -3, "max_worker": -1},
                       {"min_worker": -1, "max_worker": 2}):
            assert_error(mgmt.mgmt("PUT", path, params=params), 400, "BadRequestException",
                         negative)
    for params in ({"min_worker": 65}, {"min_worker": 1, "max_worker": 65},
                   {"min_worker": 2161, "synchronous": "true"}):
        assert_error(mgmt.mgmt("PUT", "/models/sc", params=params), 400, "BadRequestException",
                     "Requested workers exceed the limit of max_workers=64", prefix=True)
    doc = mgmt.describe("sc")[0]
    assert (doc["minWorkers"], doc["maxWorkers"], len(doc["workers"])) == (1, 1, 1)


def test_documented_twins_post_ping_and_put_predictions(mgmt: Daemon) -> None:
    doc = requests.options(mgmt.url("inference", "/"), timeout=10).json()
    assert {"get", "post"} <= set(doc["paths"]["/ping"])
    assert "put" in doc["paths"]["/predictions/{model_name}/{model_version}"]
    for method in ("GET", "POST"):
        r = mgmt.infer(method, "/ping")
        assert (r.status_code, r.json()) == (200, {"status": "Healthy"})
    assert post_models(mgmt, url="noop.mar", initial_workers=1).status_code == 200
    for path in ("/predictions/noop", "/predictions/noop/1.0"):
        r = mgmt.infer("PUT", path, data=b"x")
        assert (r.status_code, r.json()) == (200, {"ok": 1})


def test_sync_register_and_scale_answer_206_when_only_some_workers_start(mgmt: Daemon) -> None:
    """SPEC 1.1/1.3: 206 "Workers scaling in progress..." when fewer than asked came up (the
    first_only handler loads in one worker of its extracted copy and fails in every other)."""
    build_archive("first_only", mgmt.model_store)
    r = post_models(mgmt, url="first_only.mar", initial_workers=2, synchronous="true")
    assert_status(r, 206, "Workers scaling in progress...")
    assert [w["status"] for w in mgmt.workers("first_only")].count("READY") == 1
    assert mgmt.infer("POST", "/predictions/first_only").json() == {"ok": 1}
    r = mgmt.mgmt("PUT", "/models/first_only", params={"min_worker": 3, "synchronous": "true"})
    assert_status(r, 206, "Workers scaling in progress...")
    assert_status(mgmt.unregister("first_only"), 200, 'Model "first_only" unregistered')
