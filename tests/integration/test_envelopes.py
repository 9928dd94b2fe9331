"""``service_envelope`` (config key, or ``TS_SERVICE_ENVELOPE``) end to end: one daemon per
envelope serving the built-in image_classifier (tiny_classifier.mar), requests in each
envelope's shape, answers in its shape; an unknown envelope stops the start."""
from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import shutil

import pytest
import torch
from PIL import Image

from tests.support.daemon import Daemon
from tests.support.handler_archives import TINY_LABELS, image_bytes, load_model
from worker.ts.handler_utils.image_transforms import imagenet_transform

# An already processed image (3 x 8 x 8), which the vision handlers take as a list of numbers.
PLANES = [[[round(0.1 * (c + y - x), 2) for x in range(8)] for y in range(8)] for c in range(3)]


@pytest.fixture(scope="module")
def envelope_daemon(handler_store, tmp_path_factory):
    """envelope_daemon(name) -> a started daemon with that envelope, made once per module."""
    archives, _ = handler_store
    made: dict[str, Daemon] = {}

    def get(name: str) -> Daemon:
        if name not in made:
            workdir = tmp_path_factory.mktemp(f"envelope-{name}")
            (workdir / "store").mkdir()
            shutil.copy2(archives / "tiny_classifier.mar", workdir / "store")
            # kservev2 comes from the environment, the others from config.properties
            env = {"TS_SERVICE_ENVELOPE": name} if name == "kservev2" else None
            settings = None if env else {"service_envelope": name}
            made[name] = Daemon(workdir, workdir / "store", settings, env).start()
            r = made[name].register("tiny_classifier.mar", model_name="tiny", initial_workers=1,
                                    batch_size=2, max_batch_delay=500)
            assert r.status_code == 200, r.text
        return made[name]

    yield get
    for daemon in made.values():
        daemon.cleanup()


@pytest.fixture(scope="module")
def model(handler_store):
    return load_model(handler_store[1], "tiny_classifier")


def classes(model: torch.nn.Module, tensor: torch.Tensor) -> dict[str, float]:
    with torch.inference_mode():
        probs, indices = torch.topk(torch.softmax(model(tensor.unsqueeze(0)), dim=1)[0], 5)
    return {TINY_LABELS[i]: p for i, p in zip(indices.tolist(), probs.tolist())}


def of_image(model: torch.nn.Module, image: bytes) -> dict[str, float]:
    return classes(model, imagenet_transform()(Image.open(io.BytesIO(image))))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_json_envelope_instances_in_predictions_out(envelope_daemon, model):
    daemon = envelope_daemon("json")
    jpeg, png = image_bytes("JPEG", (64, 48)), image_bytes("PNG", (50, 70))
    # one request of two instances and one of one, answered from one batch of three rows
    bodies = [{"instances": [{"b64": b64(jpeg)}, {"b64": b64(png)}]},
              {"instances": [{"b64": b64(png)}]}]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:   # batch_size 2: one batch
        answers = list(pool.map(
            lambda body: daemon.infer("POST", "/predictions/tiny", json=body), bodies))
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    first, second = (json.loads(a.text)["predictions"] for a in answers)
    assert first == [pytest.approx(of_image(model, jpeg), rel=1e-4),
                     pytest.approx(of_image(model, png), rel=1e-4)]
    assert second == [pytest.approx(of_image(model, png), rel=1e-4)]
    planes = daemon.infer("POST", "/predictions/tiny", json={"instances": [PLANES]})
    assert planes.status_code == 200, planes.text
    assert json.loads(planes.text) == {
        "predictions": [pytest.approx(classes(model, torch.tensor(PLANES)), rel=1e-4)]}


def test_body_envelope_hands_the_bare_body_to_the_handler(envelope_daemon, model):
    image = image_bytes("PNG")
    r = envelope_daemon("body").infer("POST", "/predictions/tiny", data=image)
    assert r.status_code == 200, r.text
    assert r.json() == pytest.approx(of_image(model, image), rel=1e-4)


def test_kserve_envelope_on_the_v1_route(envelope_daemon, model):
    image = image_bytes("JPEG")
    r = envelope_daemon("kserve").infer("POST", "/v1/models/tiny:predict",
                                        json={"instances": [{"data": b64(image)}]})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [pytest.approx(of_image(model, image), rel=1e-4)]}


def test_kservev2_envelope_on_the_v2_route(envelope_daemon, model):
    daemon = envelope_daemon("kservev2")
    flat = [value for plane in PLANES for row in plane for value in row]
    body = {"id": "req-42", "inputs": [
        {"name": "planes", "shape": [3, 8, 8], "datatype": "FP32", "data": flat}]}
    r = daemon.infer("POST", "/v2/models/tiny/infer", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {
        "id": "req-42", "model_name": "tiny_classifier", "model_version": "1.0",
        "outputs": [{"name": "planes", "datatype": "BYTES", "shape": [1],
                     "data": [pytest.approx(classes(model, torch.tensor(PLANES)), rel=1e-4)]}]}
    image = image_bytes("PNG", (40, 60))
    body = {"inputs": [{"name": "photo", "shape": [1], "datatype": "BYTES", "data": [b64(image)]}]}
    r = daemon.infer("POST", "/v2/models/tiny/infer", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["id"] == r.headers["x-request-id"]     # no id of its own: torchd's request id
    assert answer["outputs"] == [{"name": "photo", "datatype": "BYTES", "shape": [1],
                                  "data": [pytest.approx(of_image(model, image), rel=1e-4)]}]


def test_a_body_the_envelope_cannot_read_is_a_400(envelope_daemon):
    daemon = envelope_daemon("kserve")
    r = daemon.infer("POST", "/v1/models/tiny:predict", json={"rows": []})
    assert r.status_code == 400
    assert r.json() == {"code": 400, "type": "InternalServerException",
                        "message": 'kserve envelope: request 0 has no "instances" or "inputs"'}
    ok = daemon.infer("POST", "/v1/models/tiny:predict",
                      json={"instances": [{"data": b64(image_bytes("PNG"))}]})
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 1


@pytest.mark.parametrize("source", ["config", "env"])
def test_an_unknown_envelope_stops_the_start(tmp_path, source):
    settings = {"service_envelope": "xml"} if source == "config" else None
    env = {"TS_SERVICE_ENVELOPE": "xml"} if source == "env" else None
    (tmp_path / "store").mkdir()
    daemon = Daemon(tmp_path, tmp_path / "store", settings, env)
    try:
        daemon.start(wait=False)
        assert daemon.proc.wait(60) != 0
        log = daemon.log()
        assert "invalid value for service_envelope: 'xml'" in log
        assert "expected one of json, body, kserve, kservev2" in log
    finally:
        daemon.cleanup()
