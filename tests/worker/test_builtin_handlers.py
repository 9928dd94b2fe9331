"""TorchServe's built-in handlers in-process: input forms, outputs, text clean-up, resolution of
``--handler <name>``, and what ``explain_handle`` hands ``get_insights``. The same handlers run
through the real daemon in tests/integration/test_builtin_handlers.py."""
from __future__ import annotations

import base64
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.support.handler_archives import image_bytes
from worker.ts.context import Context
from worker.ts.handler_utils.text_utils import basic_english, get_tokenizer, ngrams_iterator
from worker.ts.torch_handler.base_handler import BaseHandler
from worker.ts.torch_handler.image_classifier import ImageClassifier
from worker.ts.torch_handler.image_segmenter import ImageSegmenter
from worker.ts.torch_handler.object_detector import ObjectDetector
from worker.ts.torch_handler.text_classifier import TextClassifier
from worker.ts.utils.util import PredictionException

REPO = Path(__file__).resolve().parents[2]


def cpu_handler(cls: type) -> BaseHandler:
    handler = cls()
    handler.device = torch.device("cpu")
    return handler


# ---- vision inputs ----------------------------------------------------------------------------

def test_every_input_form_gives_the_same_image_tensor():
    jpeg = image_bytes("JPEG")
    text = base64.b64encode(jpeg).decode()
    rows = [{"data": bytearray(jpeg)}, {"body": bytearray(jpeg)}, {"data": text},
            {"body": {"b64": text}}, {"body": {"data": text}}, bytearray(jpeg), text]
    batch = cpu_handler(ImageClassifier).preprocess(rows)
    assert batch.shape == (len(rows), 3, 224, 224)
    for index in range(1, len(rows)):
        assert torch.equal(batch[index], batch[0]), index


def test_a_list_of_numbers_is_an_already_processed_image():
    image = [[[0.5, 0.25], [1.0, 0.0]]] * 3
    batch = cpu_handler(ImageClassifier).preprocess([{"body": image}])
    assert batch.shape == (1, 3, 2, 2) and batch[0, 0].tolist() == [[0.5, 0.25], [1.0, 0.0]]


@pytest.mark.parametrize(("row", "message"), [
    ({"body": bytearray(b"not an image at all")}, "is not an image PIL can read"),
    ({"body": bytearray(image_bytes("PNG")[:60])}, "is not an image PIL can read"),
    ({"data": "%%%not base64%%%="}, "is a string but not base64"),
    ({"data": "aGVsbG8gd29ybGQ="}, "is not an image PIL can read"),
    ({"body": {"text": "hi"}}, "neither an image nor a list of numbers"),
])
def test_unreadable_inputs_are_400(row, message):
    with pytest.raises(PredictionException) as caught:
        cpu_handler(ImageClassifier).preprocess([row])
    assert caught.value.error_code == 400 and message in caught.value.message


def test_images_of_different_sizes_cannot_share_a_detector_batch():
    rows = [{"body": bytearray(image_bytes("PNG", (30, 20)))},
            {"body": bytearray(image_bytes("PNG", (20, 30)))}]
    with pytest.raises(PredictionException) as caught:
        cpu_handler(ObjectDetector).preprocess(rows)
    assert caught.value.error_code == 400


# ---- outputs ----------------------------------------------------------------------------------

def test_image_classifier_top_k_with_labels():
    handler = cpu_handler(ImageClassifier)
    handler.mapping = {"0": "a", "1": "b", "2": "c", "3": "d", "4": "e", "5": "f", "6": "g"}
    logits = torch.tensor([[0.0, 6.0, 1.0, 5.0, 2.0, 4.0, 3.0],
                           [7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    probs = torch.softmax(logits, dim=1)
    answer = handler.postprocess(logits)
    assert [list(row) for row in answer] == [["b", "d", "f", "g", "e"], ["a", "b", "c", "d", "e"]]
    assert answer[0]["b"] == pytest.approx(probs[0, 1].item())
    handler.set_max_result_classes(2)
    assert handler.get_max_result_classes() == 2
    assert [list(row) for row in handler.postprocess(logits)] == [["b", "d"], ["a", "b"]]
    handler.set_max_result_classes(50)     # more than the model has: every class
    assert len(handler.postprocess(logits)[0]) == 7


def test_image_classifier_without_mapping_uses_class_indices():
    answer = cpu_handler(ImageClassifier).postprocess(torch.tensor([[1.0, 3.0, 2.0]]))
    assert list(answer[0]) == ["1", "2", "0"]


def test_segmenter_answers_class_and_probability_per_pixel():
    scores = torch.zeros(2, 3, 2, 2)
    scores[0, 2] = 5.0
    scores[1, 1, 0, 1] = 5.0
    answer = cpu_handler(ImageSegmenter).postprocess({"out": scores})
    top = torch.softmax(torch.tensor([0.0, 0.0, 5.0]), 0)[2].item()
    assert len(answer) == 2 and len(answer[0]) == 2 and len(answer[0][0]) == 2
    assert answer[0][1][1] == [2.0, pytest.approx(top)]
    assert answer[1][0][1] == [1.0, pytest.approx(top)]
    assert answer[1][0][0] == [0.0, pytest.approx(1 / 3)]


def test_detector_keeps_boxes_at_or_above_the_threshold():
    handler = cpu_handler(ObjectDetector)
    handler.mapping = {"1": "cat", "2": "dog"}
    image = {"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 2.0, 2.0], [0, 0, 1, 1.0]]),
             "labels": torch.tensor([1, 2, 7]), "scores": torch.tensor([0.5, 0.25, 0.75])}
    assert handler.postprocess([image]) == [[{"cat": [0.0, 0.0, 4.0, 4.0], "score": 0.5},
                                             {"7": [0.0, 0.0, 1.0, 1.0], "score": 0.75}]]


# ---- text -------------------------------------------------------------------------------------

def test_basic_english_tokenizer():
    line = 'Hello, World! It\'s <br />a "test": yes; (ok?)'
    assert basic_english(line) == ["hello", ",", "world", "!", "it", "'", "s", "a", "test", "yes",
                                   "(", "ok", "?", ")"]
    assert get_tokenizer(None)("a  b") == ["a", "b"]
    with pytest.raises(ValueError):
        get_tokenizer("spacy")


def test_ngrams_iterator_yields_unigrams_then_ngrams():
    assert list(ngrams_iterator(["here", "we", "are"], 2)) == [
        "here", "we", "are", "here we", "we are"]
    assert list(ngrams_iterator(["a", "b", "c"], 3))[-3:] == ["a b", "b c", "a b c"]


def test_text_clean_up_as_torchserve():
    handler = cpu_handler(TextClassifier)
    cleaned = handler.clean_text("The team's <b>game</b> WASN'T great! &amp; Café, outlet's")
    assert cleaned == "the teams game was not great  cafe outlets"


def test_text_classifier_batches_one_bag_per_request():
    handler = cpu_handler(TextClassifier)
    handler.source_vocab = {"<unk>": 0, "the": 1, "game": 2, "the game": 3, "fell": 4}
    ids, words = handler.preprocess([{"body": bytearray(b"The game!")}, {"data": "fell off"}])
    assert ids.tolist() == [1, 2, 3, 4, 0, 0] and words == ["the", "game"]
    assert handler._offsets == [0, 3]
    with pytest.raises(PredictionException) as caught:
        handler.preprocess([{"body": {"not": "text"}}])
    assert caught.value.error_code == 400


# ---- explain_handle ---------------------------------------------------------------------------

class Insightful(BaseHandler):
    def get_insights(self, tensor, inputs, target):
        return [("insights", tensor, inputs, target)]


@pytest.mark.parametrize(("raw", "inputs", "target"), [
    ([{"data": "x", "target": 3}, {"data": "y", "target": 1}], "x", 3),
    ([{"body": b"raw"}], b"raw", 0),
    ([{"data": "x", "target": None}], "x", 0),
    (["bare"], None, 0),
])
def test_explain_handle_passes_the_first_rows_data_and_target(raw, inputs, target):
    assert Insightful().explain_handle("tensor", raw) == [("insights", "tensor", inputs, target)]


# ---- resolution -------------------------------------------------------------------------------

RESOLVE = textwrap.dedent("""
    import sys
    from worker.ts_alias import install_ts_alias
    install_ts_alias()
    sys.path.insert(0, sys.argv[1])
    from worker.service import import_handler_module
    for name in sys.argv[2:]:
        try:
            print(name, import_handler_module(name).__name__)
        except ImportError as exc:
            print(name, type(exc).__name__, exc.name)
""")


def test_handler_names_fall_back_to_the_builtin_handlers(tmp_path):
    (tmp_path / "text_classifier.py").write_text("SHADOW = True\n")   # the archive's wins
    (tmp_path / "needs_dep.py").write_text("import no_such_dependency_xyz\n")
    names = ["image_classifier", "object_detector", "image_segmenter", "vision_handler",
             "text_classifier", "base_handler", "no_such_handler", "needs_dep"]
    run = subprocess.run([sys.executable, "-c", RESOLVE, str(tmp_path), *names], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "image_classifier worker.ts.torch_handler.image_classifier",
        "object_detector worker.ts.torch_handler.object_detector",
        "image_segmenter worker.ts.torch_handler.image_segmenter",
        "vision_handler worker.ts.torch_handler.vision_handler",
        "text_classifier text_classifier",
        "base_handler worker.ts.torch_handler.base_handler",
        "no_such_handler ModuleNotFoundError no_such_handler",
        "needs_dep ModuleNotFoundError no_such_dependency_xyz",
    ]


# ---- @timed -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("yaml_config", "timed_steps"), [
    ({"handler": {"profile": True}}, ["ts_handler_preprocess", "ts_handler_postprocess"]),
    ({"handler": {"profile": False}}, []),
    ({}, []),
])
def test_timed_steps_record_only_when_the_model_profiles(yaml_config, timed_steps):
    handler = cpu_handler(ImageClassifier)
    handler.context = Context("m", "/tmp", {}, 1, None, "0", model_yaml_config=yaml_config)
    handler.postprocess(handler.preprocess([{"body": bytearray(image_bytes("PNG", (8, 8)))}])
                        .mean(dim=(2, 3)))
    records = [r for r in handler.context.metrics.records if r.name.startswith("ts_handler_")]
    assert [r.name for r in records] == timed_steps
    assert all(r.unit == "Milliseconds" and r.value >= 0 for r in records)
