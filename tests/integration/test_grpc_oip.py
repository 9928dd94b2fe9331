"""The Open Inference Protocol's GRPCInferenceService on torchd's gRPC inference port (issue 16)
through the real daemon, driven by tritonclient.grpc unchanged: liveness, readiness, server and
model metadata, inference with FP32 and BYTES tensors, errors with REST's messages."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_v2 import TENSORS, archive
from tests.support.archives import copy_store
from tests.support.daemon import Daemon

np = pytest.importorskip("numpy")
grpcclient = pytest.importorskip("tritonclient.grpc")
utils = pytest.importorskip("tritonclient.utils")


@pytest.fixture(scope="module")
def daemon(archive_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("grpc-oip")
    store = copy_store(archive_dir, workdir / "store")
    archive(store, workdir / "src1", "1.0")
    archive(store, workdir / "src2", "2.0", TENSORS)
    d = Daemon(workdir, store)
    d.start()
    for version in ("1.0", "2.0"):
        r = d.register(f"doubler_{version}.mar", model_name="doubler", initial_workers=1)
        assert r.status_code == 200, r.text
    r = d.register("noop.mar", model_name="idle", initial_workers=0)
    assert r.status_code == 200, r.text
    yield d
    d.cleanup()


@pytest.fixture(scope="module")
def client(daemon: Daemon):
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{daemon.ports['grpc_inference']}")
    yield client
    client.close()


def test_health_and_metadata(daemon, client) -> None:
    assert client.is_server_live() and client.is_server_ready()
    server = client.get_server_metadata()
    rest = daemon.infer("GET", "/v2").json()
    assert (server.name, server.version, list(server.extensions)) == (
        rest["name"], rest["version"], rest["extensions"])
    assert client.is_model_ready("doubler") and client.is_model_ready("doubler", "2.0")
    assert not client.is_model_ready("idle")
    with pytest.raises(utils.InferenceServerException, match="Model not found: nothing"):
        client.is_model_ready("nothing")
    metadata = client.get_model_metadata("doubler", "2.0", as_json=True)
    assert metadata == {"name": "doubler", "versions": ["1.0", "2.0"], "platform": "pytorch",
                        "inputs": [{"name": "input0", "datatype": "FP32", "shape": ["-1", "3"]}],
                        "outputs": [{"name": "output0", "datatype": "FP32",
                                     "shape": ["-1", "3"]}]}
    plain = client.get_model_metadata("doubler", as_json=True)   # JSON omits empty lists
    assert (plain["name"], plain.get("inputs"), plain.get("outputs")) == ("doubler", None, None)
    with pytest.raises(utils.InferenceServerException,
                       match="Model version: 7.0 does not exist for model: doubler"):
        client.get_model_metadata("doubler", "7.0")


def test_infer_fp32(client) -> None:
    for version in ("", "2.0"):
        tensor = grpcclient.InferInput("input0", [2, 3], "FP32")
        tensor.set_data_from_numpy(np.array([[1, 2, 3], [4.5, 5, 6]], dtype=np.float32))
        result = client.infer("doubler", [tensor], model_version=version, request_id="g-1",
                              outputs=[grpcclient.InferRequestedOutput("output0")])
        assert result.as_numpy("output0").tolist() == [[2.0, 4.0, 6.0], [9.0, 10.0, 12.0]]
        response = result.get_response()
        assert (response.id, response.model_version) == ("g-1", version or "1.0")


def test_infer_bytes(client) -> None:
    tensor = grpcclient.InferInput("input0", [3], "BYTES")
    tensor.set_data_from_numpy(np.array([b"ab", "é".encode(), b""], dtype=np.object_))
    result = client.infer("doubler", [tensor])
    assert result.as_numpy("output0").tolist() == [b"abab", "éé".encode(), b""]


def test_errors(client) -> None:
    tensor = grpcclient.InferInput("input0", [1], "FP32")
    tensor.set_data_from_numpy(np.array([1], dtype=np.float32))
    with pytest.raises(utils.InferenceServerException, match="Model not found: nothing") as e:
        client.infer("nothing", [tensor])
    assert e.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(utils.InferenceServerException, match="has no worker") as e:
        client.infer("idle", [tensor])
    assert e.value.status() == "StatusCode.UNAVAILABLE"
    short = grpcclient.InferInput("input0", [4], "FP32")   # shape says 4 values, 1 is sent
    short._raw_content = np.array([1], dtype=np.float32).tobytes()
    with pytest.raises(utils.InferenceServerException, match="4 bytes of raw contents") as e:
        client.infer("doubler", [short])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert client.is_server_live()
