"""TorchServe's built-in handlers through the real daemon: archives made by torch-model-archiver
with ``--handler image_classifier`` (and the other names), answered as TorchServe answers them.
Each expected answer is computed here, in-process, from the same weights."""
from __future__ import annotations

import base64
import concurrent.futures
import io
import shutil

import pytest
import torch
from PIL import Image

from tests.support.daemon import Daemon
from tests.support.handler_archives import DETECTOR_LABELS, TEXT_LABELS, TINY_LABELS, \
    image_bytes, load_model
from worker.ts.handler_utils.image_transforms import CenterCrop, Compose, Normalize, Resize, \
    ToRGB, ToTensor, imagenet_transform

MODELS = {"resnet18": {}, "tiny_classifier": {"batch_size": 4, "max_batch_delay": 500},
          "custom_classifier": {}, "segmenter": {}, "detector": {},
          "text_classifier": {"batch_size": 2, "max_batch_delay": 500}}


@pytest.fixture(scope="module")
def daemon(handler_store, tmp_path_factory):
    archives, _ = handler_store
    workdir = tmp_path_factory.mktemp("builtin-handlers")
    store = workdir / "store"
    shutil.copytree(archives, store)
    server = Daemon(workdir, store)
    try:
        server.start()
        for name, params in MODELS.items():
            r = server.register(f"{name}.mar", initial_workers=1, **params)
            assert r.status_code == 200, (name, r.text, server.log(4000))
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def weights(handler_store):
    return handler_store[1]


def top_k(logits: torch.Tensor, labels: list[str], k: int) -> dict[str, float]:
    probs, classes = torch.topk(torch.softmax(logits, dim=1)[0], k)
    return {labels[c]: p for c, p in zip(classes.tolist(), probs.tolist())}


def expected_classes(model: torch.nn.Module, image: bytes, labels: list[str], k: int = 5,
                     transform=None) -> dict[str, float]:
    tensor = (transform or imagenet_transform())(Image.open(io.BytesIO(image)))
    with torch.inference_mode():
        return top_k(model(tensor.unsqueeze(0)), labels, k)


def assert_same_classes(answer: dict[str, float], expected: dict[str, float]) -> None:
    assert list(answer) == list(expected)       # the same classes, best first
    assert answer == pytest.approx(expected, rel=1e-4, abs=1e-6)


# ---- image_classifier -------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_resnet18_answers_a_pil_image_with_the_top_5(daemon, weights, fmt):
    image = image_bytes(fmt)
    labels = [f"class_{i}" for i in range(1000)]
    expected = expected_classes(load_model(weights, "resnet18"), image, labels)
    r = daemon.infer("POST", "/predictions/resnet18", data=image)
    assert r.status_code == 200, r.text
    assert len(r.json()) == 5 and all(label.startswith("class_") for label in r.json())
    assert_same_classes(r.json(), expected)
    # a multipart upload ("data" field) answers the same
    upload = daemon.infer("POST", "/predictions/resnet18", files={"data": ("img", image)})
    assert upload.status_code == 200 and upload.json() == r.json()


def test_input_forms_and_a_batch_get_their_own_answers(daemon, weights):
    model = load_model(weights, "tiny_classifier")
    images = [image_bytes("JPEG", (64, 48)), image_bytes("PNG", (48, 80)),
              image_bytes("PNG", (40, 40), mode="L")]
    expected = [expected_classes(model, image, TINY_LABELS) for image in images]
    sends = [{"data": images[0]},                                                 # raw body
             {"json": base64.b64encode(images[1]).decode()},                      # base64 JSON
             {"files": {"body": ("img.png", images[2])}}]                         # form field

    def post(kwargs):
        return daemon.infer("POST", "/predictions/tiny_classifier", **kwargs)

    with concurrent.futures.ThreadPoolExecutor(3) as pool:   # batch_size 4: one batch
        answers = list(pool.map(post, sends))
    for answer, want in zip(answers, expected):
        assert answer.status_code == 200, answer.text
        assert_same_classes(answer.json(), want)


def test_a_non_image_body_is_a_400_and_the_model_keeps_serving(daemon):
    r = daemon.infer("POST", "/predictions/tiny_classifier", data=b"this is not an image")
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"code": 400, "type": "InternalServerException",
                        "message": "input of request 0 is not an image PIL can read "
                                   "(20 bytes, an unknown format)"}
    again = daemon.infer("POST", "/predictions/tiny_classifier", data=image_bytes("PNG"))
    assert again.status_code == 200 and len(again.json()) == 5


def test_a_custom_subclass_of_image_classifier(daemon, weights):
    image = image_bytes("PNG")
    transform = Compose([ToRGB(), Resize(40), CenterCrop(32), ToTensor(),
                         Normalize([0.5] * 3, [0.25] * 3)])
    expected = expected_classes(load_model(weights, "tiny_classifier"), image, TINY_LABELS, 3,
                                transform)
    r = daemon.infer("POST", "/predictions/custom_classifier", data=image)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["handler"] == "custom" and body["input_shape"] == [3, 32, 32]
    assert_same_classes(body["top"], expected)


@pytest.mark.parametrize("handler", ["image_classifier.py", "image_classifier:ImageClassifier"])
def test_register_names_the_builtin_handler_in_other_spellings(daemon, handler):
    r = daemon.register("tiny_classifier.mar", model_name="spelled", initial_workers=1,
                        handler=handler)
    assert r.status_code == 200, r.text
    try:
        answer = daemon.infer("POST", "/predictions/spelled", data=image_bytes("JPEG"))
        assert answer.status_code == 200 and len(answer.json()) == 5
    finally:
        daemon.unregister("spelled")


# ---- image_segmenter, object_detector ---------------------------------------------------------

def test_image_segmenter_answers_class_and_probability_per_cell(daemon, weights):
    image = image_bytes("JPEG")
    tensor = imagenet_transform()(Image.open(io.BytesIO(image))).unsqueeze(0)
    with torch.inference_mode():
        best = torch.softmax(load_model(weights, "segmenter")(tensor)["out"], dim=1).max(dim=1)
    r = daemon.infer("POST", "/predictions/segmenter", data=image)
    assert r.status_code == 200, r.text
    grid = r.json()
    assert len(grid) == 7 and all(len(row) == 7 for row in grid)   # 224 / 32 cells a side
    for y in range(7):
        for x in range(7):
            assert grid[y][x][0] == float(best.indices[0, y, x])
            assert grid[y][x][1] == pytest.approx(best.values[0, y, x].item(), rel=1e-5)


def test_object_detector_answers_labelled_boxes_above_the_threshold(daemon):
    r = daemon.infer("POST", "/predictions/detector", data=image_bytes("PNG", (300, 200)))
    assert r.status_code == 200, r.text
    # the stand-in model draws boxes from the image's own size (300 x 200: not resized)
    assert r.json() == [{DETECTOR_LABELS["1"]: [0.0, 0.0, 150.0, 100.0],
                         "score": pytest.approx(0.9)},
                        {DETECTOR_LABELS["2"]: [75.0, 50.0, 300.0, 200.0],
                         "score": pytest.approx(0.6)}]


# ---- text_classifier --------------------------------------------------------------------------

TEXTS = {
    # cleaned: "the teams game was not great" -> words and bigrams (vocabulary indices, 0: unknown)
    "The team's <b>game</b> wasn't great!": [1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0],
    "Stocks fell; the MARKET...": [10, 11, 1, 9, 12, 0, 0],
}


def test_text_classifier_answers_every_class_of_each_text(daemon, weights):
    model = load_model(weights, "text_classifier")
    labels = [TEXT_LABELS[str(i)] for i in range(4)]

    def post(text):
        return daemon.infer("POST", "/predictions/text_classifier", data=text.encode(),
                            headers={"Content-Type": "text/plain"})

    with concurrent.futures.ThreadPoolExecutor(2) as pool:   # batch_size 2: one batch, two bags
        answers = dict(zip(TEXTS, pool.map(post, TEXTS)))
    for text, ids in TEXTS.items():
        with torch.inference_mode():
            probs = torch.softmax(model(torch.tensor(ids), torch.tensor([0])), dim=1)[0]
        answer = answers[text]
        assert answer.status_code == 200, answer.text
        assert list(answer.json()) == labels
        assert answer.json() == pytest.approx(dict(zip(labels, probs.tolist())), rel=1e-5)

