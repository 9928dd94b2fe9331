"""Management API (SPEC 1, issue 3) through the real daemon: the seed document's curl examples,
success messages, list pagination, set-default, OpenAPI, describe, and unregister with work in
flight.

One daemon per module (its zygote costs a torch import); every test registers its own names and
an autouse fixture unregisters whatever a test leaves behind, so tests stay independent. The
fixtures and helpers are in tests/support/management.py. The HTTP conventions and the errors of
scale, describe, unregister and set-default are in test_management_errors.py; registration (SPEC
1.1-1.2, its errors, downloads) in test_management_register.py and
test_management_register_params.py.
"""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil
import requests
from openapi_spec_validator import validate

from daemon.osutil import pid_gone as gone
from tests.support import management as base
from tests.support.daemon import Daemon
from tests.support.layout import torchserve_layout
from tests.support.management import (
    DESCRIBE_KEYS,
    ISO_UTC,
    WORKER_KEYS,
    assert_error,
    assert_status,
    post_models,
    registered,
    request_id_ok,
    stable,
)
from tests.support.supervision import ready_pids, wait_taken
from tests.support.waiting import wait_until

# The daemon, recording server and cleanup of tests/support/management.py (this module's own).
served, recorder, mgmt, clean = base.served, base.recorder, base.mgmt, base.clean


# ---- the seed document's examples -------------------------------------------------------------

def test_seed_register_zero_workers(mgmt: Daemon) -> None:
    r = post_models(mgmt, url="noop.mar")
    assert_status(r, 200, registered("noop", "1.0", 0))
    assert mgmt.workers("noop") == []


def test_seed_register_async(mgmt: Daemon) -> None:
    r = post_models(mgmt, initial_workers=1, synchronous="false", url="noop.mar")
    assert_status(r, 202, "Processing worker updates...")
    workers = mgmt.wait_workers("noop", 1)
    assert psutil.pid_exists(workers[0]["pid"])


def test_seed_register_sync_then_predict_at_once(mgmt: Daemon) -> None:
    r = post_models(mgmt, initial_workers=1, synchronous="true", url="noop.mar")
    assert_status(r, 200, registered("noop", "1.0", 1))
    [worker] = mgmt.workers("noop")
    assert worker["status"] == "READY"
    p = mgmt.infer("POST", "/predictions/noop", data=b"x")
    assert p.status_code == 200 and p.json() == {"ok": 1}


def test_seed_scale_async_sync_and_version(mgmt: Daemon) -> None:
    # SPEC 1.1: register is synchronous by default (TorchServe's code, not its docs).
    assert_status(post_models(mgmt, url="noop.mar", initial_workers=1), 200,
                  registered("noop", "1.0", 1))
    first = ready_pids(mgmt, "noop")
    assert_status(mgmt.mgmt("PUT", "/models/noop", params={"min_worker": 3}), 202,
                  "Processing worker updates...")
    pids = {w["pid"] for w in mgmt.wait_workers("noop", 3)}
    assert first < pids and all(psutil.pid_exists(p) for p in pids)
    assert psutil.Process(mgmt.pid) in _ancestors(next(iter(pids)))

    r = mgmt.mgmt("PUT", "/models/noop", params={"min_worker": 1, "synchronous": "true"})
    assert_status(r, 200, "Workers scaled to 1 for model: noop")
    remaining = ready_pids(mgmt, "noop")
    assert len(remaining) == 1 and len(mgmt.workers("noop")) == 1
    wait_until(lambda: all(gone(p) for p in pids - remaining), 15, what="stopped workers exit")

    r = mgmt.mgmt("PUT", "/models/noop", params={"min_worker": 3, "synchronous": "true"})
    assert_status(r, 200, "Workers scaled to 3 for model: noop")
    assert len(ready_pids(mgmt, "noop")) == 3

    assert_status(post_models(mgmt, url="noop_2.mar"), 200, registered("noop", "2.0", 0))
    r = mgmt.mgmt("PUT", "/models/noop/2.0", params={"min_worker": 3, "synchronous": "true"})
    assert_status(r, 200, "Workers scaled to 3 for model: noop, version: 2.0")
    v2 = ready_pids(mgmt, "noop", "2.0")
    assert len(v2) == 3 and not v2 & ready_pids(mgmt, "noop")
    described = mgmt.describe("noop", "2.0")[0]
    assert (described["minWorkers"], described["maxWorkers"]) == (3, 3)
    r = mgmt.mgmt("PUT", "/models/noop/2.0", params={"min_worker": 0, "synchronous": "true"})
    assert_status(r, 200, "Workers scaled to 0 for model: noop, version: 2.0")
    assert mgmt.workers("noop", "2.0") == []
    wait_until(lambda: all(gone(p) for p in v2), 15, what="version 2.0 workers exit")


def _ancestors(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).parents()


def test_seed_describe_default_version_and_all(mgmt: Daemon) -> None:
    assert post_models(mgmt, url="noop.mar", initial_workers=1).status_code == 200
    assert post_models(mgmt, url="noop_2.mar", initial_workers=1,
                       synchronous="true").status_code == 200
    default = mgmt.mgmt("GET", "/models/noop")
    assert default.status_code == 200 and default.headers["content-type"] == "application/json"
    request_id_ok(default)
    [v1] = default.json()
    assert (v1["modelName"], v1["modelVersion"], v1["modelUrl"]) == ("noop", "1.0", "noop.mar")
    [v2] = mgmt.describe("noop", "2.0")
    assert (v2["modelVersion"], v2["modelUrl"]) == ("2.0", "noop_2.mar")
    both = mgmt.describe("noop", "all")
    assert [m["modelVersion"] for m in both] == ["1.0", "2.0"]
    assert stable(both) == stable([v1, v2])
    for doc in both:
        assert set(doc) == DESCRIBE_KEYS
        assert (doc["engine"], doc["runtime"], doc["minWorkers"], doc["maxWorkers"],
                doc["batchSize"], doc["maxBatchDelay"]) == ("Torch", "python", 1, 1, 1, 100)
        assert [set(w) for w in doc["workers"]] == [WORKER_KEYS]


def test_seed_unregister_version_and_set_default(mgmt: Daemon) -> None:
    assert post_models(mgmt, url="noop.mar").status_code == 200
    assert post_models(mgmt, url="noop_2.mar").status_code == 200
    assert mgmt.describe("noop")[0]["modelVersion"] == "1.0"   # a second version is not default
    r = mgmt.mgmt("PUT", "/models/noop/2.0/set-default")
    assert_status(r, 200, 'Default version successfully updated for model "noop" to "2.0"')
    assert mgmt.describe("noop")[0]["modelVersion"] == "2.0"
    listed = mgmt.mgmt("GET", "/models").json()["models"]
    assert listed == [{"modelName": "noop", "modelUrl": "noop_2.mar"}]
    assert_status(mgmt.mgmt("DELETE", "/models/noop/1.0"), 200, 'Model "noop" unregistered')
    assert [m["modelVersion"] for m in mgmt.describe("noop", "all")] == ["2.0"]
    assert_status(mgmt.mgmt("DELETE", "/models/noop"), 200, 'Model "noop" unregistered')
    assert mgmt.mgmt("GET", "/models/noop").status_code == 404


def test_seed_list_with_pagination(mgmt: Daemon) -> None:
    names = ["pg_c", "pg_a", "pg_e", "pg_b", "pg_d"]
    for name in names:
        assert post_models(mgmt, url="noop.mar", model_name=name).status_code == 200
    everything = [{"modelName": n, "modelUrl": "noop.mar"} for n in sorted(names)]

    def page(**params: Any) -> dict[str, Any]:
        r = mgmt.mgmt("GET", "/models", params=params)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        request_id_ok(r)
        return r.json()

    assert page() == {"models": everything}
    assert page(limit=2, next_page_token=2) == {"nextPageToken": "4", "models": everything[2:4]}
    assert page(limit=2) == {"nextPageToken": "2", "models": everything[:2]}
    assert page(limit=2, next_page_token=4) == {"models": everything[4:]}
    # SPEC 1.6: the token is present whenever offset + limit <= total, even on the last page.
    assert page(limit=5) == {"nextPageToken": "5", "models": everything}
    assert page(limit=3, next_page_token=2) == {"nextPageToken": "5", "models": everything[2:]}
    assert page(limit=6) == {"models": everything}
    assert page(limit=5, next_page_token=5) == {"models": []}
    assert page(next_page_token=9) == {"models": []}
    assert page(limit=0) == {"nextPageToken": "0", "models": []}
    for big in (101, 1000, -1, -100):            # > 100 or < 0 mean 100
        assert page(limit=big) == {"models": everything}
    assert page(limit=2, next_page_token=-3) == {"nextPageToken": "2", "models": everything[:2]}
    assert page(limit="abc", next_page_token="x") == {"models": everything}   # lenient ints


def test_options_on_both_ports_is_valid_openapi(mgmt: Daemon) -> None:
    for api, path in (("management", "/models/{model_name}/{model_version}/set-default"),
                      ("inference", "/predictions/{model_name}/{model_version}")):
        r = requests.options(mgmt.url(api, "/"), timeout=10)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        request_id_ok(r)
        doc = r.json()
        validate(doc)
        assert doc["openapi"] == "3.0.1" and path in doc["paths"]
        assert r.content == torchserve_layout(doc)
        bare = requests.request("OPTIONS", f"http://127.0.0.1:{mgmt.ports[api]}", timeout=10)
        assert bare.json() == doc
        assert requests.get(mgmt.url(api, "/api-description"), timeout=10).json() == doc
    mgmt_paths = requests.options(mgmt.url("management", "/"), timeout=10).json()["paths"]
    assert "/predictions/{model_name}" not in mgmt_paths and "/models" in mgmt_paths


def test_options_on_a_model_answers_its_endpoints(mgmt: Daemon) -> None:
    """TorchServe answers OPTIONS on a model's prediction and management paths with the model's
    endpoints; torchd with its port's document cut to them, the name filled in."""
    assert post_models(mgmt, url="noop.mar").status_code == 200
    assert post_models(mgmt, url="noop_2.mar").status_code == 200
    for api, path, expected in (
            ("inference", "/predictions/noop", "/predictions/noop/{model_version}"),
            ("inference", "/explanations/noop/2.0", "/v2/models/noop/infer"),
            ("inference", "/predictions/noop/1.0/v1/chat/completions", "/v1/models/noop:predict"),
            ("management", "/models/noop", "/models/noop/{model_version}/set-default"),
            ("management", "/models/noop/2.0", "/models/noop")):
        r = requests.options(mgmt.url(api, path), timeout=10)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
        request_id_ok(r)
        doc = r.json()
        validate(doc)
        assert expected in doc["paths"] and all("noop" in p for p in doc["paths"]), path
        assert "1.0 (default), 2.0" in doc["info"]["description"]
    # a model's document is laid out once per versions and default: a change shows at once
    assert requests.put(mgmt.url("management", "/models/noop/2.0/set-default"),
                        timeout=10).status_code == 200
    for api, path in (("inference", "/predictions/noop"), ("management", "/models/noop")):
        r = requests.options(mgmt.url(api, path), timeout=10)
        assert "1.0, 2.0 (default)" in r.json()["info"]["description"]
        assert r.content == torchserve_layout(r.json())
    for api, path in (("inference", "/predictions/nope"), ("management", "/models/nope")):
        assert_error(requests.options(mgmt.url(api, path), timeout=10), 404,
                     "ModelNotFoundException", "Model not found: nope")
    for api, path in (("inference", "/predictions/noop/9.9"), ("management", "/models/noop/9.9")):
        assert_error(requests.options(mgmt.url(api, path), timeout=10), 404,
                     "ModelVersionNotFoundException",
                     "Model version: 9.9 does not exist for model: noop")


# ---- describe ---------------------------------------------------------------------------------

def test_describe_workers_are_real(mgmt: Daemon) -> None:
    assert mgmt.first_worker_id == "9000"
    r = post_models(mgmt, url="noop.mar", model_name="real", initial_workers=2,
                    synchronous="true")
    assert r.status_code == 200, r.text
    [doc] = mgmt.describe("real")
    assert set(doc) == DESCRIBE_KEYS
    assert doc == {**doc, "modelName": "real", "modelVersion": "1.0", "modelUrl": "noop.mar",
                   "engine": "Torch", "runtime": "python", "minWorkers": 2, "maxWorkers": 2,
                   "batchSize": 1, "maxBatchDelay": 100, "responseTimeout": 120,
                   "startupTimeout": 120, "loadedAtStartup": False,
                   # TorchServe 0.12's keys: torchd's values when model-config.yaml sets none
                   "maxRetryTimeoutInSec": 300, "clientTimeoutInMills": 0, "parallelType": "",
                   "parallelLevel": 0, "deviceType": "", "continuousBatching": False,
                   "useJobTicket": False, "useVenv": False, "stateful": False,
                   "sequenceMaxIdleMSec": 0, "sequenceTimeoutMSec": 0, "maxNumSequence": 1,
                   "maxSequenceJobQueueSize": 1,
                   "jobQueueStatus": {"remainingCapacity": 100, "pendingRequests": 0}}
    ids = [w["id"] for w in doc["workers"]]
    assert all(isinstance(i, str) and int(i) > 9000 for i in ids) and len(set(ids)) == 2
    daemon_proc = psutil.Process(mgmt.pid)
    for worker in doc["workers"]:
        assert set(worker) == WORKER_KEYS
        assert worker["status"] == "READY" and ISO_UTC.match(worker["startTime"])
        assert (worker["gpu"], worker["gpuUsage"]) == (False, "N/A")
        assert psutil.pid_exists(worker["pid"]) and daemon_proc in _ancestors(worker["pid"])
        rss = psutil.Process(worker["pid"]).memory_info().rss
        assert 0 < worker["memoryUsage"] and abs(worker["memoryUsage"] - rss) < rss // 2
    # Ids are never reused: scaling down and up again gives new ones.
    assert mgmt.mgmt("PUT", "/models/real", params={"min_worker": 0,
                                                    "synchronous": "true"}).status_code == 200
    assert mgmt.mgmt("PUT", "/models/real", params={"min_worker": 1,
                                                    "synchronous": "true"}).status_code == 200
    [again] = mgmt.workers("real")
    assert int(again["id"]) > max(int(i) for i in ids)


def test_describe_truthful_status_of_a_failing_worker(mgmt: Daemon) -> None:
    r = post_models(mgmt, url="fail_load.mar", initial_workers=1, synchronous="false")
    assert_status(r, 202, "Processing worker updates...")
    seen: set[str] = set()

    def failed() -> bool:
        workers = mgmt.workers("fail_load")
        seen.update(w["status"] for w in workers)
        return any(w["status"] == "FAILED" for w in workers)

    wait_until(failed, 60, what="worker ends FAILED")
    assert seen <= {"STARTING", "BACKOFF", "FAILED"}
    [worker] = mgmt.workers("fail_load")
    assert "torchd_no_such_module" in worker.get("lastError", "")
    assert mgmt.infer("GET", "/ping").status_code == 500


def test_describe_customized_metadata(mgmt: Daemon) -> None:
    assert post_models(mgmt, url="describe.mar", model_name="cust", initial_workers=1,
                       synchronous="true").status_code == 200
    plain = mgmt.describe("cust")[0]
    assert "customizedMetadata" not in plain
    for path in ("/models/cust", "/models/cust/1.0", "/models/cust/all"):
        r = mgmt.mgmt("GET", path, params={"customized": "true"})
        assert r.status_code == 200, r.text
        [doc] = r.json()
        assert doc["customizedMetadata"] == json.dumps({"hello": "world", "model": "cust"})
    assert post_models(mgmt, url="noop.mar", model_name="nocust", initial_workers=1,
                       synchronous="true").status_code == 200
    r = mgmt.mgmt("GET", "/models/nocust", params={"customized": "true"})
    assert r.status_code == 200 and r.json()[0]["customizedMetadata"] == ""
    assert mgmt.mgmt("PUT", "/models/cust", params={"min_worker": 0,
                                                    "synchronous": "true"}).status_code == 200
    assert_error(mgmt.mgmt("GET", "/models/cust", params={"customized": "true"}), 503,
                 "ServiceUnavailableException",
                 'Model "cust" has no worker to serve the describe request')


def _predict_sleep(d: Daemon, name: str, seconds: float) -> tuple[int, Any, float]:
    r = d.infer("POST", f"/predictions/{name}", json={"sleep": seconds}, timeout=60)
    try:
        body = r.json()
    except ValueError:
        body = r.text
    return r.status_code, body, time.monotonic()


def _queue(d: Daemon, name: str) -> dict[str, int]:
    return d.describe(name)[0]["jobQueueStatus"]


def test_queue_status_and_unregister_with_work_in_flight(mgmt: Daemon) -> None:
    assert post_models(mgmt, url="sleep.mar", model_name="slow", initial_workers=1,
                       synchronous="true").status_code == 200
    [worker] = mgmt.workers("slow")
    with ThreadPoolExecutor(4) as pool:
        in_flight = pool.submit(_predict_sleep, mgmt, "slow", 4)
        wait_taken(mgmt, "slow", 1)   # the worker has taken it: nothing is waiting
        assert _queue(mgmt, "slow") == {"remainingCapacity": 100, "pendingRequests": 0}
        queued = [pool.submit(_predict_sleep, mgmt, "slow", 0) for _ in range(2)]
        wait_until(lambda: _queue(mgmt, "slow")["pendingRequests"] == 2, 10, what="2 queued")
        assert _queue(mgmt, "slow") == {"remainingCapacity": 98, "pendingRequests": 2}
        assert not in_flight.done()
        started = time.monotonic()
        r = mgmt.unregister("slow")
        unregistered = time.monotonic()
        assert_status(r, 200, 'Model "slow" unregistered')
        for future in queued:
            status, body, finished = future.result(10)
            assert status == 503, body
            assert body["type"] == "ServiceUnavailableException"
            assert finished - started < 1.5          # answered at once, not after the sleep
        status, body, finished = in_flight.result(10)
        assert (status, body) == (200, {"slept": 4.0})
        assert finished <= unregistered + 1.0         # unregister waited for it
    wait_until(lambda: gone(worker["pid"]), 15, what="worker exits")
    assert mgmt.infer("POST", "/predictions/slow").status_code == 404
