"""POST /models through the real daemon, the parameters' success paths: JSON bodies, lenient and
out-of-range numbers meaning the defaults, a download registered and deleted again, overrides of
the manifest, and registrations that race a failing first version or an unregister. The errors
of SPEC 1.1 in TorchServe's order are in test_management_register.py. Fixtures and helpers come
from tests/support/management.py (its own daemon here)."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.support import management as base
from tests.support.daemon import Daemon
from tests.support.management import (
    BAD_REQUEST,
    INTERNAL,
    RecordingServer,
    _descendants,
    assert_error,
    assert_status,
    extracted,
    post_models,
    registered,
)
from tests.support.waiting import wait_until

# The daemon, recording server and cleanup of tests/support/management.py (this module's own).
served, recorder, mgmt, clean = base.served, base.recorder, base.mgmt, base.clean


# ---- success paths of the parameters ---------------------------------------------------------

def test_json_body_registration_equals_query(mgmt: Daemon) -> None:
    params = {"url": "noop.mar", "initial_workers": 1, "synchronous": True, "batch_size": 4,
              "max_batch_delay": 50, "response_timeout": 30, "startup_timeout": 40,
              "runtime": "python3"}
    r = mgmt.mgmt("POST", "/models", json={**params, "model_name": "by_json"})
    assert_status(r, 200, registered("by_json", "1.0", 1))
    query = {k: str(v).lower() if isinstance(v, bool) else v for k, v in params.items()}
    assert_status(post_models(mgmt, **query, model_name="by_query"), 200,
                  registered("by_query", "1.0", 1))

    def settings(name: str) -> dict[str, Any]:
        [doc] = mgmt.describe(name)
        assert doc["modelName"] == name and len(doc["workers"]) == 1
        return {k: v for k, v in doc.items() if k not in ("modelName", "workers")}

    assert settings("by_json") == settings("by_query")
    assert (settings("by_json")["batchSize"], settings("by_json")["runtime"]) == (4, "python3")
    r = mgmt.mgmt("POST", "/models", json={"url": "noop.mar", "model_name": "js_async",
                                          "initial_workers": 1, "synchronous": False})
    assert_status(r, 202, "Processing worker updates...")
    assert mgmt.wait_workers("js_async", 1)
    r = mgmt.mgmt("POST", "/models", data='{"url": "noop.mar", "model_name": "js_ct"}',
                  headers={"Content-Type": "application/json; charset=utf-8"})
    assert_status(r, 200, registered("js_ct", "1.0", 0))
    r = mgmt.mgmt("POST", "/models", data='{"url": "noop.mar", "model_name": "js_case"}',
                  headers={"Content-Type": "Application/JSON"})
    assert_status(r, 200, registered("js_case", "1.0", 0))


def test_json_body_errors(mgmt: Daemon) -> None:
    for body in ("{not json", "[1, 2]", '"noop.mar"'):
        r = mgmt.mgmt("POST", "/models", data=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["type"] == BAD_REQUEST, r.text
    # An empty JSON body falls back to the query string.
    r = mgmt.mgmt("POST", "/models", params={"url": "noop.mar"}, data="",
                  headers={"Content-Type": "application/json"})
    assert_status(r, 200, registered("noop", "1.0", 0))


def test_lenient_integers_and_booleans(mgmt: Daemon) -> None:
    assert_status(post_models(mgmt, url="noop.mar", model_name="len_a", initial_workers="abc"),
                  200, registered("len_a", "1.0", 0))                    # default: 0
    assert_status(post_models(mgmt, url="noop.mar", model_name="len_b", initial_workers=1,
                              synchronous="TRUE"), 200, registered("len_b", "1.0", 1))
    assert_status(post_models(mgmt, url="noop.mar", model_name="len_c", initial_workers=1,
                              synchronous="yes"), 202, "Processing worker updates...")
    assert_status(post_models(mgmt, url="noop.mar", model_name="len_d", batch_size="x",
                              max_batch_delay="1.5", response_timeout=""),
                  200, registered("len_d", "1.0", 0))
    doc = mgmt.describe("len_d")[0]
    assert (doc["batchSize"], doc["maxBatchDelay"], doc["responseTimeout"]) == (1, 100, 120)
    mgmt.wait_workers("len_c", 1)
    r = mgmt.mgmt("PUT", "/models/len_c", params={"min_worker": "two", "synchronous": "True"})
    assert_status(r, 200, "Workers scaled to 1 for model: len_c")         # default min: 1
    r = mgmt.mgmt("DELETE", "/models/len_d", params={"synchronous": "maybe", "timeout": "soon"})
    assert_status(r, 200, 'Model "len_d" unregistered')


def test_download_registers_and_unregister_deletes_it(mgmt: Daemon,
                                                      recorder: RecordingServer) -> None:
    before = len(extracted(mgmt))
    url = recorder.url("dl_noop.mar")
    r = post_models(mgmt, url=url, model_name="dl", initial_workers=1, synchronous="true")
    assert_status(r, 200, registered("dl", "1.0", 1))
    assert recorder.requests[-1] == "/dl_noop.mar"
    assert (mgmt.model_store / "dl_noop.mar").is_file()
    assert mgmt.describe("dl")[0]["modelUrl"] == url
    assert len(extracted(mgmt)) == before + 1
    assert mgmt.infer("POST", "/predictions/dl").status_code == 200
    assert_status(mgmt.unregister("dl"), 200, 'Model "dl" unregistered')
    assert not (mgmt.model_store / "dl_noop.mar").exists()
    assert len(extracted(mgmt)) == before


def test_store_archive_is_kept_and_extracted_copy_removed(mgmt: Daemon) -> None:
    before = len(extracted(mgmt))
    assert post_models(mgmt, url="noop.mar", model_name="keep").status_code == 200
    assert len(extracted(mgmt)) == before + 1
    assert mgmt.unregister("keep").status_code == 200
    assert (mgmt.model_store / "noop.mar").is_file()
    assert len(extracted(mgmt)) == before


def test_handler_and_model_name_override_the_manifest(mgmt: Daemon) -> None:
    r = post_models(mgmt, url="echo.mar", model_name="over", handler="handler",
                    initial_workers=1)
    assert_status(r, 200, registered("over", "1.0", 1))
    assert mgmt.infer("POST", "/predictions/over", data=b"hi").status_code == 200
    r = post_models(mgmt, url="noop.mar", model_name="nohandler", handler="no_such_module",
                    initial_workers=1)
    assert r.status_code == 500 and "no_such_module" in r.json()["message"], r.text


@pytest.mark.parametrize("name", ["a/b", "..", "."])
def test_unaddressable_model_name(mgmt: Daemon, name: str) -> None:
    before = extracted(mgmt)
    assert_error(post_models(mgmt, url="noop.mar", model_name=name), 400, BAD_REQUEST,
                 f"Invalid model name: {name}", prefix=True)
    assert extracted(mgmt) == before
    assert mgmt.mgmt("GET", "/models").json() == {"models": []}


def test_timeouts_of_zero_or_less_mean_the_default(mgmt: Daemon) -> None:
    # TorchServe clients send -1 for "the default"; a 0 s response timeout would fail every
    # request. (startup_timeout=0 is TorchServe's 500: the next test.)
    r = post_models(mgmt, url="noop.mar", initial_workers=1, response_timeout=0,
                    startup_timeout=-1)
    assert_status(r, 200, registered("noop", "1.0", 1))
    doc = mgmt.describe("noop")[0]
    assert (doc["responseTimeout"], doc["startupTimeout"]) == (120, 120)
    assert mgmt.infer("POST", "/predictions/noop").json() == {"ok": 1}


def test_startup_timeout_zero_fails_to_start_workers_as_in_torchserve(mgmt: Daemon) -> None:
    # TorchServe's own suite (test/postman/management_data.json): 500 with workers, 200 without.
    processes = _descendants(mgmt)
    r = post_models(mgmt, url="noop.mar", initial_workers=3, batch_size=3, startup_timeout=0)
    assert_error(r, 500, INTERNAL, "Failed to start workers for model noop version: 1.0: "
                 "Worker did not load the model within 0 seconds (startup_timeout)")
    assert mgmt.mgmt("GET", "/models").json() == {"models": []}
    assert _descendants(mgmt) == processes   # no worker was even spawned
    r = post_models(mgmt, url="noop.mar", startup_timeout=0)
    assert_status(r, 200, registered("noop", "1.0", 0))
    assert mgmt.describe("noop")[0]["startupTimeout"] == 0
    assert_status(post_models(mgmt, url="noop.mar", model_name="alive", initial_workers=1), 200,
                  registered("alive", "1.0", 1))
    assert mgmt.infer("POST", "/predictions/alive").json() == {"ok": 1}   # still serving


def test_failed_first_version_hands_the_default_to_a_later_one(mgmt: Daemon) -> None:
    """A second version registered while the first one's workers are failing to start (slowly:
    1.5 s): the first is rolled back, the default moves to the second, never names a missing
    version (GET /models would fail on it)."""
    with ThreadPoolExecutor(1) as pool:
        failing = pool.submit(post_models, mgmt, url="slow_fail.mar", initial_workers=1,
                              synchronous="true")
        wait_until(lambda: mgmt.mgmt("GET", "/models/slow_fail").status_code == 200, 30,
                   what="slow_fail 1.0 registered")
        second = post_models(mgmt, url="noop_2.mar", model_name="slow_fail")
        assert_status(second, 200, registered("slow_fail", "2.0", 0))
        assert [m["modelVersion"] for m in mgmt.describe("slow_fail", "all")] == ["1.0", "2.0"]
        failed = failing.result(60)
    assert_error(failed, 500, INTERNAL, "Failed to start workers for model slow_fail version: "
                 "1.0: ", prefix=True)
    assert "failed slowly" in failed.json()["message"]
    assert mgmt.mgmt("GET", "/models").json() == {
        "models": [{"modelName": "slow_fail", "modelUrl": "noop_2.mar"}]}
    assert [m["modelVersion"] for m in mgmt.describe("slow_fail", "all")] == ["2.0"]
    assert mgmt.describe("slow_fail")[0]["modelVersion"] == "2.0"


def test_integers_beyond_java_int_mean_the_default(mgmt: Daemon) -> None:
    # TorchServe parses them as Java ints: out of range is malformed. Passed on, such a batch
    # size could not even be sent to a worker.
    huge = 10**20
    r = post_models(mgmt, url="noop.mar", initial_workers=1, batch_size=huge,
                    max_batch_delay=-huge, response_timeout=2**31, startup_timeout=huge)
    assert_status(r, 200, registered("noop", "1.0", 1))
    doc = mgmt.describe("noop")[0]
    assert (doc["batchSize"], doc["maxBatchDelay"], doc["responseTimeout"],
            doc["startupTimeout"]) == (1, 100, 120, 120)
    assert mgmt.infer("POST", "/predictions/noop").json() == {"ok": 1}
    r = mgmt.mgmt("POST", "/models", data='{"url": "noop.mar", "model_name": "inf", '
                  '"batch_size": Infinity, "max_batch_delay": NaN, "initial_workers": 1e300}',
                  headers={"Content-Type": "application/json"})
    assert_status(r, 200, registered("inf", "1.0", 0))
    assert mgmt.describe("inf")[0]["batchSize"] == 1
    assert_status(mgmt.mgmt("PUT", "/models/noop", params={"min_worker": huge,
                                                          "synchronous": "true"}),
                  200, "Workers scaled to 1 for model: noop")
    page = mgmt.mgmt("GET", "/models", params={"limit": huge, "next_page_token": huge}).json()
    assert [m["modelName"] for m in page["models"]] == ["inf", "noop"]


@pytest.mark.parametrize("how", ["register", "scale"])
def test_unregistered_while_a_sync_call_waits(mgmt: Daemon, how: str) -> None:
    """The synchronous call cannot succeed any more: a 500 saying why, at once, and nothing left
    behind (its worker, still loading for 1.5 s, is stopped)."""
    processes, before = _descendants(mgmt), extracted(mgmt)
    if how == "scale":
        assert post_models(mgmt, url="slow_load.mar").status_code == 200
        call = ("PUT", "/models/slow_load", {"min_worker": 1, "synchronous": "true"})
    else:
        call = ("POST", "/models", {"url": "slow_load.mar", "initial_workers": 1,
                                    "synchronous": "true"})
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(mgmt.mgmt, call[0], call[1], params=call[2])
        wait_until(lambda: any(w["status"] == "STARTING"
                               for w in (mgmt.workers("slow_load")
                                         if mgmt.mgmt("GET", "/models/slow_load").ok else [])),
                   30, what="a worker STARTING")
        assert_status(mgmt.unregister("slow_load"), 200, 'Model "slow_load" unregistered')
        answer = waiting.result(30)
    assert_error(answer, 500, INTERNAL, "Failed to start workers for model slow_load version: "
                 "1.0: the model was unregistered while its workers were starting")
    assert mgmt.mgmt("GET", "/models").json() == {"models": []}
    assert extracted(mgmt) == before
    wait_until(lambda: _descendants(mgmt).keys() <= processes.keys(), 10,
               what=lambda: f"left behind: {_descendants(mgmt)} (before: {processes})")


def test_unusable_yaml_numbers_mean_the_default(mgmt: Daemon) -> None:
    config = "batchSize: .inf\nmaxBatchDelay: .nan\nminWorkers: 1e30\nmaxWorkers: 2\n" \
             "responseTimeout: 99999999999\njobQueueSize: 7\n"
    base.write_zip(mgmt.model_store / "yaml_odd.mar", {
        "MAR-INF/MANIFEST.json": json.dumps({"runtime": "python", "model": {
            "modelName": "yaml_odd", "modelVersion": "1.0", "handler": "handler.py",
            "configFile": "model-config.yaml"}}),
        "model-config.yaml": config,
        "handler.py": ("def handle(data, context):\n"
                       "    return [1 for _ in data] if data else None\n")})
    try:
        assert_status(post_models(mgmt, url="yaml_odd.mar"), 200,
                      registered("yaml_odd", "1.0", 0))
        doc = mgmt.describe("yaml_odd")[0]
        assert (doc["batchSize"], doc["maxBatchDelay"], doc["minWorkers"], doc["maxWorkers"],
                doc["responseTimeout"]) == (1, 100, 0, 2, 120)
        assert doc["jobQueueStatus"]["remainingCapacity"] == 7
        r = mgmt.mgmt("PUT", "/models/yaml_odd", params={"min_worker": 1, "synchronous": "true"})
        assert_status(r, 200, "Workers scaled to 1 for model: yaml_odd")
        assert mgmt.infer("POST", "/predictions/yaml_odd").status_code == 200
    finally:
        (mgmt.model_store / "yaml_odd.mar").unlink()
