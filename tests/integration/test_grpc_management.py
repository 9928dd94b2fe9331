"""TorchServe's ManagementAPIsService over gRPC (issues 16 and 27) through the real daemon, with
stubs generated in the test from torchd's .proto files (TorchServe 0.12.0's): every rpc answers
as TorchServe 0.12.0's gRPC front end does (compared with a real TorchServe 0.12.0 when these
tests were written): the REST status sentence itself as ``msg`` for register, scale,
set-default and unregister, the REST JSON body with a two-space indent for describe and list;
every REST error of the management API comes back as the mapped gRPC status, with the REST
message and TorchServe's Java exception class, on a line of its own, as the details."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.support.archives import build_archive, copy_store
from tests.support.daemon import Daemon
from tests.support.grpc_stubs import channel, generate_stubs
from tests.support.management import stable, write_zip

C = grpc.StatusCode
# The mapping (TorchServe's); 405 (model API off) and 500 as torchd maps them.
MAPPED = {400: C.INVALID_ARGUMENT, 401: C.UNAUTHENTICATED, 403: C.PERMISSION_DENIED,
          404: C.NOT_FOUND, 405: C.PERMISSION_DENIED, 409: C.ABORTED,
          413: C.RESOURCE_EXHAUSTED, 429: C.RESOURCE_EXHAUSTED, 500: C.INTERNAL,
          501: C.UNIMPLEMENTED, 503: C.UNAVAILABLE, 504: C.DEADLINE_EXCEEDED}
# TorchServe's exception classes, as its gRPC details name them (after the message and "\n")
JAVA_CLASSES = {
    "BadRequestException": "org.pytorch.serve.http.BadRequestException",
    "ConflictStatusException": "org.pytorch.serve.http.ConflictStatusException",
    "InternalServerException": "org.pytorch.serve.http.InternalServerException",
    "InvalidModelVersionException": "org.pytorch.serve.http.InvalidModelVersionException",
    "ModelNotFoundException": "org.pytorch.serve.archive.model.ModelNotFoundException",
    "ModelVersionNotFoundException":
        "org.pytorch.serve.archive.model.ModelVersionNotFoundException",
    "InvalidModelException": "org.pytorch.serve.archive.model.InvalidModelException",
    "DownloadArchiveException": "org.pytorch.serve.archive.DownloadArchiveException",
}
NOWHERE = "http://127.0.0.1:9"   # allowed, and nothing listens: a download fails at once


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory):
    return generate_stubs(tmp_path_factory.mktemp("stubs"))


@pytest.fixture(scope="module")
def daemon(archive_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("grpc-mgmt")
    store = copy_store(archive_dir, workdir / "store")
    # a second version, and archives that cannot be registered
    build_archive("noop", workdir / "v2", version="2.0").rename(store / "noop_2.mar")
    (store / "garbage.mar").write_bytes(b"this is not a zip file")
    write_zip(store / "bad_manifest.mar", {"MAR-INF/MANIFEST.json": "{not json"})
    d = Daemon(workdir, store, {"allowed_urls": r"http://127\.0\.0\.1:9/.*"})
    d.start()
    yield d
    d.cleanup()


@pytest.fixture(scope="module")
def mgmt(daemon: Daemon, stubs: Any):
    with channel(daemon.ports["grpc_management"]) as ch:
        yield stubs.management_pb2_grpc.ManagementAPIsServiceStub(ch)


def call(mgmt: Any, stubs: Any, rpc: str, **fields: Any) -> Any:
    request = getattr(stubs.management_pb2, f"{rpc}Request")(**fields)
    return getattr(mgmt, rpc)(request, timeout=120)


def grpc_error(mgmt: Any, stubs: Any, rpc: str, **fields: Any) -> tuple[Any, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(mgmt, stubs, rpc, **fields)
    return info.value.code(), info.value.details()


def assert_same_error(daemon: Daemon, mgmt: Any, stubs: Any, rest: tuple, rpc: str,
                      **fields: Any) -> None:
    method, path, params = rest
    r = daemon.mgmt(method, path, params=params)
    assert r.status_code >= 400, (rest, r.text)
    error = r.json()
    expected = (MAPPED[r.status_code], f"{error['message']}\n{JAVA_CLASSES[error['type']]}")
    assert grpc_error(mgmt, stubs, rpc, **fields) == expected, (rest, rpc, fields)


def status_msg(response: Any) -> str:
    return response.msg


def indented(body: Any) -> str:
    return json.dumps(body, indent=2)


# ---- every rpc, answered as REST answers ----------------------------------------------------

def test_register_list_describe_scale_set_default_unregister(daemon, mgmt, stubs) -> None:
    r = call(mgmt, stubs, "RegisterModel", url="noop.mar", model_name="g1", initial_workers=1,
             synchronous=True)
    assert status_msg(r) == 'Model "g1" Version: 1.0 registered with 1 initial workers'
    r = call(mgmt, stubs, "RegisterModel", url="noop_2.mar", model_name="g1")
    assert status_msg(r) == ('Model "g1" Version: 2.0 registered with 0 initial workers. Use '
                             'scale workers API to add workers for the model.')
    # without a limit: up to 100 (TorchServe lists none: proto3's 0 taken as a limit)
    assert call(mgmt, stubs, "ListModels").msg == indented(daemon.mgmt("GET", "/models").json())
    listed = call(mgmt, stubs, "ListModels", limit=1, next_page_token=0).msg
    assert listed == indented(daemon.mgmt("GET", "/models?limit=1&next_page_token=0").json())
    for version in ("", "2.0", "all"):
        text = call(mgmt, stubs, "DescribeModel", model_name="g1", model_version=version).msg
        described = json.loads(text)
        assert text == indented(described)
        assert stable(described) == stable(daemon.describe("g1", version or None))
    r = call(mgmt, stubs, "ScaleWorker", model_name="g1", min_worker=2, synchronous=True)
    assert status_msg(r) == "Workers scaled to 2 for model: g1"
    assert len(daemon.wait_workers("g1", 2)) == 2
    r = call(mgmt, stubs, "ScaleWorker", model_name="g1", model_version="2.0", min_worker=1)
    assert status_msg(r) == "Processing worker updates..."
    r = call(mgmt, stubs, "SetDefault", model_name="g1", model_version="2.0")
    assert status_msg(r) == 'Default version successfully updated for model "g1" to "2.0"'
    assert daemon.describe("g1")[0]["modelVersion"] == "2.0"
    r = call(mgmt, stubs, "UnregisterModel", model_name="g1", model_version="1.0")
    assert status_msg(r) == 'Model "g1" unregistered'
    assert status_msg(call(mgmt, stubs, "UnregisterModel", model_name="g1")) == \
        'Model "g1" unregistered'
    assert daemon.mgmt("GET", "/models").json() == {"models": []}


def test_async_register_and_customized_describe(daemon, mgmt, stubs) -> None:
    r = call(mgmt, stubs, "RegisterModel", url="describe.mar", model_name="g2",
             initial_workers=1)   # proto3's synchronous=false: TorchServe's gRPC answer is 202
    assert status_msg(r) == "Processing worker updates..."
    daemon.wait_workers("g2", 1)
    described = json.loads(call(mgmt, stubs, "DescribeModel", model_name="g2",
                                customized=True).msg)
    rest = daemon.mgmt("GET", "/models/g2", params={"customized": "true"}).json()
    assert described[0]["customizedMetadata"] == rest[0]["customizedMetadata"]
    assert "customizedMetadata" in described[0]
    assert status_msg(call(mgmt, stubs, "UnregisterModel", model_name="g2")) == \
        'Model "g2" unregistered'


# ---- every REST error case: the mapped status, the same message -----------------------------

def test_register_errors(daemon, mgmt, stubs) -> None:
    cases = [({}, {}),
             ({"runtime": "java"}, {"runtime": "java"}),
             ({"url": "noop.mar", "runtime": "PYTHON"}, {"url": "noop.mar", "runtime": "PYTHON"}),
             ({"url": "../noop.mar"}, {"url": "../noop.mar"}),
             ({"url": "s3://bucket/x.mar"}, {"url": "s3://bucket/x.mar"}),
             ({"url": "https://example.com/x.mar"}, {"url": "https://example.com/x.mar"}),
             ({"url": f"{NOWHERE}/noop.mar"}, {"url": f"{NOWHERE}/noop.mar"}),
             ({"url": f"{NOWHERE}/missing.mar"}, {"url": f"{NOWHERE}/missing.mar"}),
             ({"url": "nothere.mar"}, {"url": "nothere.mar"}),
             ({"url": "garbage.mar"}, {"url": "garbage.mar"}),
             ({"url": "bad_manifest.mar"}, {"url": "bad_manifest.mar"}),
             ({"url": "noop.mar", "initial_workers": 65},
              {"url": "noop.mar", "initial_workers": 65}),
             ({"url": "fail_load.mar", "initial_workers": 1, "synchronous": "true"},
              {"url": "fail_load.mar", "initial_workers": 1, "synchronous": True})]
    for params, fields in cases:
        assert_same_error(daemon, mgmt, stubs, ("POST", "/models", params), "RegisterModel",
                          **fields)
    call(mgmt, stubs, "RegisterModel", url="noop.mar", model_name="dup")
    assert_same_error(daemon, mgmt, stubs, ("POST", "/models", {"url": "noop.mar",
                                                                "model_name": "dup"}),
                      "RegisterModel", url="noop.mar", model_name="dup")
    # TorchServe lets this exception escape (UNKNOWN, no details); torchd says what happened
    assert grpc_error(mgmt, stubs, "RegisterModel", url="noop.mar", model_name="dup") == (
        C.ABORTED, "Model version 1.0 is already registered for model dup\n"
                   "org.pytorch.serve.http.ConflictStatusException")
    call(mgmt, stubs, "UnregisterModel", model_name="dup")
    assert daemon.mgmt("GET", "/models").json() == {"models": []}


def test_scale_describe_unregister_set_default_errors(daemon, mgmt, stubs) -> None:
    call(mgmt, stubs, "RegisterModel", url="noop.mar", model_name="e1", synchronous=True)
    call(mgmt, stubs, "RegisterModel", url="noop_2.mar", model_name="e1", synchronous=True)
    for name, version in (("ghost", ""), ("ghost", "1.0"), ("e1", "9.9")):
        path = f"/models/{name}" + (f"/{version}" if version else "")
        for params, fields in (({"min_worker": 3, "max_worker": 2},
                                {"min_worker": 3, "max_worker": 2}),
                               ({"min_worker": -1}, {"min_worker": -1}),
                               ({"min_worker": 65}, {"min_worker": 65}),
                               ({"min_worker": 1}, {"min_worker": 1})):
            assert_same_error(daemon, mgmt, stubs, ("PUT", path, params), "ScaleWorker",
                              model_name=name, model_version=version, **fields)
        assert_same_error(daemon, mgmt, stubs, ("GET", path, {}), "DescribeModel",
                          model_name=name, model_version=version)
        assert_same_error(daemon, mgmt, stubs, ("DELETE", path, {}), "UnregisterModel",
                          model_name=name, model_version=version)
        if version:
            assert_same_error(daemon, mgmt, stubs, ("PUT", f"{path}/set-default", {}),
                              "SetDefault", model_name=name, model_version=version)
    assert_same_error(daemon, mgmt, stubs, ("GET", "/models/ghost/all", {}), "DescribeModel",
                      model_name="ghost", model_version="all")
    # the default version while another exists: 403
    for version in ("", "1.0"):
        path = "/models/e1" + (f"/{version}" if version else "")
        assert_same_error(daemon, mgmt, stubs, ("DELETE", path, {}), "UnregisterModel",
                          model_name="e1", model_version=version)
    # TorchServe: UNKNOWN without details (the exception escapes), as for a conflict
    assert grpc_error(mgmt, stubs, "UnregisterModel", model_name="e1") == (
        C.PERMISSION_DENIED, "Cannot remove default version for model e1\n"
                             "org.pytorch.serve.http.InvalidModelVersionException")
    # no model name: TorchServe's check, in its words
    assert grpc_error(mgmt, stubs, "UnregisterModel") == (
        C.INVALID_ARGUMENT,
        "Parameter url is required.\norg.pytorch.serve.http.BadRequestException")
    call(mgmt, stubs, "UnregisterModel", model_name="e1", model_version="2.0")
    call(mgmt, stubs, "UnregisterModel", model_name="e1")
