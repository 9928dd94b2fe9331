"""Archives for TorchServe's built-in handlers, built once per session with torch-model-archiver.

Each model's class lives in tests/models/<name>/model.py; weights are made here (seeded, saved as
a state_dict as TorchServe's examples save them), with the extra files the handlers read
(index_to_name.json, source_vocab.pt). ``load_model`` gives a test the same model in-process to
compute the answers the server must give.
"""
from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path
from types import ModuleType

import torch
from PIL import Image

from tests.support.archives import MODELS, build_archive

TINY_LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DETECTOR_LABELS = {"1": "cat", "2": "dog", "3": "bird"}
TEXT_LABELS = {"0": "World", "1": "Sports", "2": "Business", "3": "Sci/Tec"}
# Index = position; bigrams are entries of their own, as torchtext's ngram vocabularies have.
TEXT_VOCAB = ["<unk>", "the", "teams", "game", "was", "not", "great", "the teams", "teams game",
              "market", "stocks", "fell", "stocks fell", "science", "space", "win"]
SEEDS = {"resnet18": 18, "tiny_classifier": 7, "segmenter": 3, "detector": 5,
         "text_classifier": 11}


def model_module(name: str) -> ModuleType:
    """tests/models/<name>/model.py, imported under a name of its own."""
    folder = MODELS / name
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))   # resnet18's model.py imports its blocks module
    spec = importlib.util.spec_from_file_location(f"handler_model_{name}", folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_model(name: str) -> torch.nn.Module:
    """The model with its seeded random weights, in eval mode."""
    module = model_module(name)
    classes = [c for c in vars(module).values() if isinstance(c, type)
               and issubclass(c, torch.nn.Module) and c.__module__ == module.__name__]
    torch.manual_seed(SEEDS[name])
    model = classes[0]()
    if hasattr(model, "randomize"):
        model.randomize(SEEDS[name])
    return model.eval()


def load_model(weights: Path, name: str) -> torch.nn.Module:
    model = make_model(name)
    model.load_state_dict(torch.load(weights / name / f"{name}.pt", weights_only=True))
    return model.eval()


def _write_json(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value))
    return path


def write_weights(weights: Path) -> None:
    """<weights>/<name>/<name>.pt for every model, plus the extra files the handlers read."""
    for name in SEEDS:
        folder = weights / name
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(make_model(name).state_dict(), folder / f"{name}.pt")
    _write_json(weights / "resnet18" / "index_to_name.json",
                {str(i): [f"n{i:08d}", f"class_{i}"] for i in range(1000)})
    _write_json(weights / "tiny_classifier" / "index_to_name.json",
                dict(enumerate(TINY_LABELS)))
    _write_json(weights / "detector" / "index_to_name.json", DETECTOR_LABELS)
    _write_json(weights / "text_classifier" / "index_to_name.json", TEXT_LABELS)
    torch.save({token: index for index, token in enumerate(TEXT_VOCAB)},
               weights / "text_classifier" / "source_vocab.pt")


def build_handler_archives(out: Path, weights: Path) -> Path:
    """Every built-in handler archive in ``out``: resnet18, tiny_classifier, custom_classifier,
    segmenter, detector, text_classifier (.mar each)."""
    write_weights(weights)

    def build(name: str, handler: str, model: str | None = None,
              extra: tuple[str, ...] = ()) -> None:
        model = model or name
        build_archive(name, out, handler=handler, model_file=str(MODELS / model / "model.py"),
                      serialized_file=str(weights / model / f"{model}.pt"),
                      extra_files=[str(weights / model / f) for f in extra] or None)

    build_archive("resnet18", out, handler="image_classifier", model_file="model.py",
                  serialized_file=str(weights / "resnet18" / "resnet18.pt"),
                  extra_files=[str(weights / "resnet18" / "index_to_name.json"),
                               "resnet_blocks.py"])
    build("tiny_classifier", "image_classifier", extra=("index_to_name.json",))
    build("custom_classifier", "handler.py", model="tiny_classifier",
          extra=("index_to_name.json",))
    build("segmenter", "image_segmenter")
    build("detector", "object_detector", extra=("index_to_name.json",))
    build("text_classifier", "text_classifier",
          extra=("index_to_name.json", "source_vocab.pt"))
    return out


def image_bytes(fmt: str, size: tuple[int, int] = (300, 200), mode: str = "RGB") -> bytes:
    """A PIL-made image (a colour gradient, so crops and resizes change the answer)."""
    width, height = size
    pixels = bytes(value for y in range(height) for x in range(width)
                   for value in (x * 255 // width, y * 255 // height, (x + y) % 256))
    image = Image.frombytes("RGB", size, pixels)
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()
