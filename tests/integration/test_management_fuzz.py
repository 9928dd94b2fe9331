"""schemathesis against the live management API (issue 3, item 8): no 5xx on any generated input,
and every answer conforms to the served OpenAPI document (status, content type, body schema).

The daemon fuzzed here is its own: allowed_urls admits only a closed loopback port (nothing can be
fetched from anywhere), max_workers is small (a fuzzer cannot start dozens of workers), and one
real model is registered so that generated calls on it reach real code. A second pass pins the
path's model name to that model (and the version to real and unknown ones) for the operations
that only read or scale, so they do not all stop at "Model not found".
"""
from __future__ import annotations

import copy
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode, checks

from daemon.http.openapi import management_document
from daemon.version import VERSION
from tests.support.daemon import Daemon

MODEL = "fz"
MAX_WORKERS = 4
EXAMPLES = 25
CHECKS = [checks.not_a_server_error, checks.status_code_conformance,
          checks.content_type_conformance, checks.response_schema_conformance]
ALWAYS_SERVED = {("get", "/models"), ("options", "/"), ("get", "/api-description")}
# Bounded: every call answers fast (nothing is downloaded, at most MAX_WORKERS forked workers).
CALL_TIMEOUT = 30


@pytest.fixture(scope="module")
def fuzzed(archive_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    workdir = tmp_path_factory.mktemp("fuzz")
    store = workdir / "store"
    store.mkdir()
    shutil.copyfile(archive_dir / "noop.mar", store / "noop.mar")
    daemon = Daemon(workdir, store, {
        # Port 9 on loopback is closed: even an "allowed" URL fails at once, never leaves the host.
        "allowed_urls": r"http://127\.0\.0\.1:9/.*",
        "max_workers": MAX_WORKERS,
        "default_response_timeout": 10,
    })
    daemon.start()
    try:
        r = daemon.register("noop.mar", model_name=MODEL, initial_workers=1)
        assert r.status_code == 200, r.text
        yield daemon
        # Still serving, and the fuzzer never got past the limits.
        listed = daemon.mgmt("GET", "/models", timeout=10).json()["models"]
        assert [m["modelName"] for m in listed] == [MODEL]     # it registered nothing
        assert _worker_processes(daemon) <= MAX_WORKERS
        # The fuzzer leaves the model at whatever scale it asked for last, with workers maybe
        # still starting or stopping (so /ping may say either now). Settled at one worker, the
        # daemon must be healthy.
        settled = daemon.mgmt("PUT", f"/models/{MODEL}", timeout=CALL_TIMEOUT, params={
            "min_worker": 1, "max_worker": 1, "synchronous": "true"})
        assert settled.status_code == 200, settled.text
        ping = daemon.infer("GET", "/ping", timeout=10)
        assert (ping.status_code, ping.json()) == (200, {"status": "Healthy"})
    finally:
        daemon.cleanup()


def _worker_processes(d: Daemon) -> int:
    """Live descendants of the daemon, minus the zygote."""
    live = [p for p in psutil.Process(d.pid).children(recursive=True)
            if p.status() != psutil.STATUS_ZOMBIE]
    return max(0, len(live) - 1)


def _document(d: Daemon) -> dict[str, Any]:
    return requests.options(d.url("management", "/"), timeout=10).json()


def _schema(raw: dict[str, Any], d: Daemon) -> Any:
    schema = schemathesis.openapi.from_dict(raw)
    schema.config.update(base_url=d.url("management", ""))
    return schema


@pytest.fixture(scope="module")
def management_schema(fuzzed: Daemon) -> Any:
    return _schema(_document(fuzzed), fuzzed)


@pytest.fixture(scope="module")
def pinned_schema(fuzzed: Daemon) -> Any:
    """The same document with the model name pinned to the registered model (and versions to a
    real one, `all` and an unknown one) for the operations that read or scale."""
    raw = copy.deepcopy(_document(fuzzed))
    name = {"name": "model_name", "in": "path", "required": True,
            "schema": {"type": "string", "enum": [MODEL]}}
    version = {"name": "model_version", "in": "path", "required": True,
               "schema": {"type": "string", "enum": ["1.0", "all", "9.9"]}}
    for path, item in list(raw["paths"].items()):
        if "{model_name}" not in path:
            del raw["paths"][path]
            continue
        for method in ("delete",):   # unregistering would end the pinned pass at the first call
            item.pop(method, None)
        item["parameters"] = [name] + ([version] if "{model_version}" in path else [])
    return _schema(raw, fuzzed)


def _call(case: Any) -> int:
    started = time.monotonic()
    response = case.call(timeout=CALL_TIMEOUT)
    assert time.monotonic() - started < CALL_TIMEOUT
    assert "x-request-id" in response.headers
    case.validate_response(response, checks=CHECKS)
    return response.status_code


def fuzz(schema: Any, method: str, path: str) -> Counter:
    """EXAMPLES generated calls (valid and invalid inputs) of one operation; the statuses seen.

    Driven with hypothesis directly: schemathesis' pytest loader (from_fixture) touches a pytest
    internal (``node._nodeid``) that pytest 9 no longer has.
    """
    operation = schema[path][method.upper()]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                      operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        seen[_call(case)] += 1

    seen: Counter = Counter()
    run()
    return seen


def operations(pinned: bool = False) -> list[tuple[str, str]]:
    """(method, path) of every documented operation (the served document is this one, see
    test_served_document_is_the_one_fuzzed)."""
    found = []
    for path, item in management_document(VERSION)["paths"].items():
        for method in item:
            if method == "parameters" or (pinned and ("{model_name}" not in path
                                                      or method == "delete")):
                continue
            found.append((method, path))
    return found


def test_served_document_is_the_one_fuzzed(fuzzed: Daemon) -> None:
    assert _document(fuzzed) == management_document(VERSION)


@pytest.mark.parametrize(("method", "path"), operations(), ids=lambda v: v)
def test_management_api(management_schema: Any, method: str, path: str) -> None:
    seen = fuzz(management_schema, method, path)
    if (method, path) in ALWAYS_SERVED:
        assert any(200 <= code < 300 for code in seen), seen


@pytest.mark.parametrize(("method", "path"), operations(pinned=True), ids=lambda v: v)
def test_management_api_on_a_real_model(pinned_schema: Any, method: str, path: str) -> None:
    seen = fuzz(pinned_schema, method, path)
    assert any(200 <= code < 300 for code in seen), seen    # the calls reached the model
