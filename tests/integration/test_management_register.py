"""POST /models through the real daemon: every error of SPEC 1.1 in TorchServe's order, with its
exact status, type and message, and what each leaves behind (nothing); start failures and the
worker limit. JSON bodies, lenient parameters and downloads that succeed are in
test_management_register_params.py. Fixtures and helpers come from tests/support/management.py
(its own daemon here)."""
from __future__ import annotations

from typing import Any

import pytest

from tests.support import management as base
from tests.support.daemon import Daemon
from tests.support.management import (
    BAD_REQUEST,
    INTERNAL,
    INVALID,
    NOT_FOUND,
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


def store_listing(d: Daemon) -> list[str]:
    """Every entry of the model store, hidden ones too (a partial download would show)."""
    return sorted(p.name for p in d.model_store.iterdir())


@pytest.fixture
def nothing_fetched(recorder: RecordingServer):
    """Asserts the test made the recording server see no request at all."""
    before = len(recorder.requests)
    yield
    assert recorder.requests[before:] == []


# ---- 1-2: parameters -------------------------------------------------------------------------

def test_1_url_is_required(mgmt: Daemon) -> None:
    message = "Parameter url is required."
    assert_error(post_models(mgmt), 400, BAD_REQUEST, message)
    assert_error(post_models(mgmt, model_name="x", initial_workers=1), 400, BAD_REQUEST, message)
    assert_error(mgmt.mgmt("POST", "/models", json={"model_name": "x"}), 400, BAD_REQUEST,
                 message)
    # before the runtime check
    assert_error(post_models(mgmt, runtime="java"), 400, BAD_REQUEST, message)


@pytest.mark.parametrize("runtime", ["java", "PYTHON", "Python3", "python2", ""])
def test_2_runtime_must_be_python(mgmt: Daemon, runtime: str) -> None:
    message = f"Invalid RuntimeType value: {runtime}"
    assert_error(post_models(mgmt, url="noop.mar", runtime=runtime), 400, BAD_REQUEST, message)
    # before every url check
    assert_error(post_models(mgmt, url="", runtime=runtime), 400, BAD_REQUEST, message)
    assert_error(post_models(mgmt, url="../x.mar", runtime=runtime), 400, BAD_REQUEST, message)


# ---- 3-5: url checks, nothing fetched --------------------------------------------------------

def test_3_empty_url(mgmt: Daemon) -> None:
    assert_error(post_models(mgmt, url=""), 404, NOT_FOUND, "empty url")
    assert_error(mgmt.mgmt("POST", "/models", json={"url": ""}), 404, NOT_FOUND, "empty url")


def test_4_relative_path(mgmt: Daemon, recorder: RecordingServer, nothing_fetched) -> None:
    for url in ("../noop.mar", "a/../noop.mar", "..", recorder.url("../noop.mar"),
                recorder.url("x/../noop.mar", host="localhost")):   # before the allowed check
        assert_error(post_models(mgmt, url=url), 404, NOT_FOUND,
                     f"Relative path is not allowed in url: {url}")


def test_5_url_not_allowed_is_never_fetched(mgmt: Daemon, recorder: RecordingServer,
                                            nothing_fetched) -> None:
    port = recorder.server_address[1]
    urls = [recorder.url("noop.mar", host="localhost"),   # exists in the store: checked first
            recorder.url("dl_noop.mar", host="localhost"),
            f"https://127.0.0.1:{port}/dl_noop.mar",       # explicit allowed_urls replace https
            f"HTTP://127.0.0.2:{port}/dl_noop.mar",
            f"file://{mgmt.model_store}/noop.mar",
            "s3://bucket/dl_noop.mar"]
    for url in urls:
        assert_error(post_models(mgmt, url=url, initial_workers=1), 404, NOT_FOUND,
                     f"Given URL {url} does not match any allowed URL(s)")
    # The match ignores case, as TorchServe's does.
    r = post_models(mgmt, url=recorder.url("noop.mar").upper().replace("NOOP.MAR", "noop.mar"))
    assert_error(r, 500, INTERNAL, "Model file already exists noop.mar")


# ---- 6-7: downloads --------------------------------------------------------------------------

def test_6_download_onto_an_existing_file(mgmt: Daemon, recorder: RecordingServer,
                                          nothing_fetched) -> None:
    before = store_listing(mgmt)
    assert_error(post_models(mgmt, url=recorder.url("noop.mar")), 500, INTERNAL,
                 "Model file already exists noop.mar")
    assert store_listing(mgmt) == before


def test_7_failed_download_leaves_nothing(mgmt: Daemon, recorder: RecordingServer) -> None:
    before, seen = store_listing(mgmt), len(recorder.requests)
    url = recorder.url("missing.mar")
    assert_error(post_models(mgmt, url=url, initial_workers=1), 400,
                 "DownloadArchiveException", f"Failed to download archive from: {url}")
    assert recorder.requests[seen:] == ["/missing.mar"]
    assert store_listing(mgmt) == before
    dead = f"http://127.0.0.1:{recorder.server_address[1]}/gone/../x.mar"
    assert post_models(mgmt, url=dead).status_code == 404    # relative: refused, not fetched


def test_downloaded_invalid_archive_is_deleted(mgmt: Daemon, recorder: RecordingServer) -> None:
    before, extracted_before = store_listing(mgmt), extracted(mgmt)
    r = post_models(mgmt, url=recorder.url("dl_bad.mar"))
    assert_error(r, 400, INVALID, "MAR-INF/MANIFEST.json in dl_bad.mar is not valid JSON",
                 prefix=True)
    assert store_listing(mgmt) == before and extracted(mgmt) == extracted_before


# ---- 8-9: the archive ------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["nothere.mar", "sub/noop.mar", "noop", ".", "/noop.mar"])
def test_8_not_in_the_model_store(mgmt: Daemon, url: str) -> None:
    assert_error(post_models(mgmt, url=url), 404, NOT_FOUND, f"Model not found at: {url}")


def test_8_absolute_path_into_the_model_store(mgmt: Daemon) -> None:
    # TorchServe's stateful examples register url=<model_store>/<name>; the same entry.
    url = f"{mgmt.model_store}/noop.mar"
    assert_status(post_models(mgmt, url=url), 200, registered("noop", "1.0", 0))
    assert mgmt.describe("noop")[0]["modelUrl"] == url


@pytest.mark.parametrize(("url", "message"), [
    ("bad_manifest.mar", "MAR-INF/MANIFEST.json in bad_manifest.mar is not valid JSON"),
    ("no_manifest.mar", "Model archive no_manifest.mar has no MAR-INF/MANIFEST.json"),
    ("garbage.mar", "Model archive garbage.mar is neither"),
])
def test_9_invalid_archive(mgmt: Daemon, url: str, message: str) -> None:
    before = extracted(mgmt)
    assert_error(post_models(mgmt, url=url, initial_workers=1), 400, INVALID, message,
                 prefix=True)
    assert extracted(mgmt) == before
    assert mgmt.mgmt("GET", "/models").json() == {"models": []}


# ---- 10-11: the registry and the workers -----------------------------------------------------

def test_10_duplicate_version(mgmt: Daemon) -> None:
    assert post_models(mgmt, url="noop.mar", model_name="dup").status_code == 200
    before = extracted(mgmt)
    for params in ({}, {"initial_workers": 1}, {"synchronous": "false"}):
        assert_error(post_models(mgmt, url="noop.mar", model_name="dup", **params), 409,
                     "ConflictStatusException",
                     "Model version 1.0 is already registered for model dup")
    assert extracted(mgmt) == before                      # the duplicate's copy is gone
    assert mgmt.workers("dup") == []
    # Another version of the same name is fine and does not become the default.
    assert_status(post_models(mgmt, url="noop_2.mar", model_name="dup"), 200,
                  registered("dup", "2.0", 0))
    assert mgmt.describe("dup")[0]["modelVersion"] == "1.0"


def test_11_sync_start_failure_unregisters_again(mgmt: Daemon) -> None:
    processes, before = _descendants(mgmt), extracted(mgmt)
    head = "Failed to start workers for model fail_load version: 1.0: "
    for _ in range(2):      # truly gone: the second attempt fails the same way, not with 409
        r = post_models(mgmt, url="fail_load.mar", initial_workers=1, synchronous="true")
        assert_error(r, 500, INTERNAL, head, prefix=True)
        cause = r.json()["message"][len(head):]
        assert "ModuleNotFoundError" in cause and "torchd_no_such_module" in cause, cause
        assert_error(mgmt.mgmt("GET", "/models/fail_load"), 404, NOT_FOUND,
                     "Model not found: fail_load")
    assert extracted(mgmt) == before
    # No worker left behind (one may still be exiting for a moment).
    wait_until(lambda: _descendants(mgmt).keys() <= processes.keys(), 10,
               what=lambda: f"left behind: {_descendants(mgmt)} (before: {processes})")


def test_scale_start_failure_keeps_the_model(mgmt: Daemon) -> None:
    assert post_models(mgmt, url="fail_load.mar").status_code == 200
    r = mgmt.mgmt("PUT", "/models/fail_load", params={"min_worker": 1, "synchronous": "true"})
    assert_error(r, 500, INTERNAL, "Failed to start workers for model fail_load version: 1.0: ",
                 prefix=True)
    assert "torchd_no_such_module" in r.json()["message"]
    assert mgmt.describe("fail_load")[0]["minWorkers"] == 1


@pytest.mark.parametrize("params", [{"initial_workers": 65}, {"initial_workers": 100000}])
def test_worker_limit_on_register(mgmt: Daemon, params: dict[str, Any]) -> None:
    r = post_models(mgmt, url="noop.mar", **params)
    assert_error(r, 400, BAD_REQUEST, "Requested workers exceed the limit of max_workers=64",
                 prefix=True)
    assert mgmt.mgmt("GET", "/models").json() == {"models": []}


def test_negative_initial_workers_means_none(mgmt: Daemon) -> None:
    # TorchServe registers with 0 workers for initial_workers <= 0.
    assert_status(post_models(mgmt, url="noop.mar", initial_workers=-2), 200,
                  registered("noop", "1.0", 0))
    doc = mgmt.describe("noop")[0]
    assert (doc["minWorkers"], doc["maxWorkers"], doc["workers"]) == (0, 0, [])
