"""The Open Inference Protocol v2 through the real daemon (SPEC 2): server and model metadata,
health, readiness, inference with versions, errors as {"error": ...}, and tritonclient.http
(a real v2 client) unchanged."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.archives import ARCHIVER, copy_store, run_archiver
from tests.support.daemon import Daemon
from tests.support.layout import torchserve_layout

# Answers an OIP inference request with an OIP response: every input doubled as "output0".
DOUBLER = '''
import json


def _flat(value):
    if isinstance(value, list):
        return [x for item in value for x in _flat(item)]
    return [value]


def handle(data, context):
    if data is None:
        return None
    version = context.manifest["model"]["modelVersion"]
    answers = []
    for idx, row in enumerate(data):
        body = row.get("body")
        if isinstance(body, (bytes, bytearray)):
            body = json.loads(body)
        outputs = [{"name": "output0", "datatype": i["datatype"], "shape": i["shape"],
                    "data": [x * 2 for x in _flat(i["data"])]} for i in body["inputs"]]
        answers.append({"model_name": context.model_name, "model_version": version,
                        "id": body.get("id") or context.get_request_id(idx),
                        "outputs": outputs})
    return answers
'''

TENSORS = '''
inputs:
  - {name: input0, datatype: FP32, shape: [-1, 3]}
outputs:
  - {name: output0, datatype: FP32, shape: [-1, 3]}
'''


def archive(out: Path, work: Path, version: str, config: str | None = None) -> None:
    work.mkdir(parents=True, exist_ok=True)
    (work / "doubler.py").write_text(DOUBLER)
    cmd = [str(ARCHIVER), "--model-name", f"doubler_{version}", "--version", version,
           "--handler", str(work / "doubler.py"), "--export-path", str(out), "--force"]
    if config:
        (work / "config.yaml").write_text(config)
        cmd += ["--config-file", str(work / "config.yaml")]
    run_archiver(cmd)


@pytest.fixture(scope="module")
def daemon(archive_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("v2")
    store = copy_store(archive_dir, workdir / "store")
    archive(store, workdir / "src1", "1.0")
    archive(store, workdir / "src2", "2.0", TENSORS)
    d = Daemon(workdir, store)
    d.start()
    for version in ("1.0", "2.0"):
        r = d.register(f"doubler_{version}.mar", model_name="doubler", initial_workers=1)
        assert r.status_code == 200, r.text
    yield d
    d.cleanup()


INFER = {"id": "req-1", "inputs": [{"name": "input0", "shape": [1, 3], "datatype": "FP32",
                                    "data": [1.0, 2.0, 3.0]}]}


def test_server_metadata_and_liveness(daemon):
    r = daemon.infer("GET", "/v2")
    assert r.status_code == 200
    body = r.json()
    assert body["name"] == "torchd" and isinstance(body["version"], str)
    assert isinstance(body["extensions"], list)
    assert daemon.infer("GET", "/v2/health/live").json() == {"live": True}
    r = daemon.infer("GET", "/v2/health/ready")
    assert r.status_code == 200 and r.json() == {"ready": True}


def test_model_ready(daemon):
    for path in ("/v2/models/doubler/ready", "/v2/models/doubler/versions/2.0/ready"):
        r = daemon.infer("GET", path)
        assert r.status_code == 200 and r.json() == {"name": "doubler", "ready": True}
        assert r.content == torchserve_layout(r.json())
    r = daemon.infer("GET", "/v2/models/nothing/ready")
    assert r.status_code == 404 and r.json() == {"error": "Model not found: nothing"}
    # the layout of TorchServe's JSON answers, errors of /v2 paths as its others
    assert r.content == torchserve_layout(r.json())
    r = daemon.infer("GET", "/v2/models/doubler/versions/7.0/ready")
    assert r.status_code == 404
    assert r.json() == {"error": "Model version: 7.0 does not exist for model: doubler"}


def test_a_model_without_workers_is_not_ready(daemon):
    r = daemon.register("noop.mar", model_name="v2idle", initial_workers=0)
    assert r.status_code == 200, r.text
    try:
        r = daemon.infer("GET", "/v2/models/v2idle/ready")
        assert r.status_code == 400 and r.json() == {
            "error": 'Model "v2idle" version 1.0 is not ready'}
        r = daemon.infer("POST", "/v2/models/v2idle/infer", json=INFER)
        assert r.status_code == 503 and r.json() == {
            "error": 'Model "v2idle" has no worker to serve inference request. Please use '
                     'scale workers API to add workers.'}
    finally:
        daemon.unregister("v2idle")


def test_model_metadata(daemon):
    plain = daemon.infer("GET", "/v2/models/doubler")     # default version 1.0: no tensors
    assert plain.status_code == 200
    assert plain.json() == {"name": "doubler", "versions": ["1.0", "2.0"], "platform": "pytorch",
                            "inputs": [], "outputs": []}
    declared = daemon.infer("GET", "/v2/models/doubler/versions/2.0").json()
    assert declared["inputs"] == [{"name": "input0", "datatype": "FP32", "shape": [-1, 3]}]
    assert declared["outputs"] == [{"name": "output0", "datatype": "FP32", "shape": [-1, 3]}]
    r = daemon.infer("GET", "/v2/models/nothing")
    assert r.status_code == 404 and r.json() == {"error": "Model not found: nothing"}


def test_infer_default_and_named_versions(daemon):
    for path, version in (("/v2/models/doubler/infer", "1.0"),
                          ("/v2/models/doubler/versions/2.0/infer", "2.0")):
        r = daemon.infer("POST", path, json=INFER)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        assert r.json() == {"model_name": "doubler", "model_version": version, "id": "req-1",
                            "outputs": [{"name": "output0", "datatype": "FP32",
                                         "shape": [1, 3], "data": [2.0, 4.0, 6.0]}]}


def test_infer_errors_are_v2_error_documents(daemon):
    r = daemon.infer("POST", "/v2/models/nothing/infer", json=INFER)
    assert r.status_code == 404 and r.json() == {"error": "Model not found: nothing"}
    r = daemon.infer("POST", "/v2/models/doubler/versions/9.0/infer", json=INFER)
    assert r.status_code == 404
    assert r.json() == {"error": "Model version: 9.0 does not exist for model: doubler"}
    r = daemon.infer("POST", "/v2/models/doubler/infer", json={"no": "inputs"})
    assert r.status_code == 503 and r.json() == {"error": "Prediction failed"}


def test_tritonclient_http(daemon):
    np = pytest.importorskip("numpy")
    httpclient = pytest.importorskip("tritonclient.http")
    utils = pytest.importorskip("tritonclient.utils")
    client = httpclient.InferenceServerClient(f"127.0.0.1:{daemon.ports['inference']}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("doubler") and client.is_model_ready("doubler", "2.0")
        assert not client.is_model_ready("nothing")
        assert client.get_server_metadata()["name"] == "torchd"
        metadata = client.get_model_metadata("doubler", "2.0")
        assert metadata["versions"] == ["1.0", "2.0"] and metadata["inputs"][0]["name"] == \
            "input0"
        for version in ("", "2.0"):
            tensor = httpclient.InferInput("input0", [1, 3], "FP32")
            tensor.set_data_from_numpy(np.array([[1, 2, 3]], dtype=np.float32),
                                       binary_data=False)
            wanted = httpclient.InferRequestedOutput("output0", binary_data=False)
            result = client.infer("doubler", [tensor], model_version=version,
                                  outputs=[wanted], request_id="t-1")
            assert result.as_numpy("output0").tolist() == [[2.0, 4.0, 6.0]]
            response = result.get_response()
            assert response["id"] == "t-1"
            assert response["model_version"] == (version or "1.0")
        with pytest.raises(utils.InferenceServerException, match="Model not found: nothing"):
            client.infer("nothing", [tensor])
    finally:
        client.close()
