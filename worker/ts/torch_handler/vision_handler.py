"""``VisionHandler``: the base of the image handlers. Each request's image becomes one tensor of
the batch, through the class's ``image_processing`` pipeline.

Inputs, as TorchServe takes them: a request's "data" (else "body") value holding the image's
bytes, a base64 string of them, or a list of numbers (an already processed image, used as is).
Envelopes hand over bare values instead of request dicts; those are taken the same way, and so
is a JSON object body holding the image under "data", "body" or "b64".
"""
from __future__ import annotations

import base64
import binascii
import io
import logging
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from worker.ts.handler_utils.image_transforms import ToTensor
from worker.ts.handler_utils.timer import timed
from worker.ts.torch_handler.base_handler import BaseHandler
from worker.ts.utils.util import PredictionException

logger = logging.getLogger(__name__)

# What PIL raises for bytes that are not a whole image it can read.
_UNREADABLE = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError,
               Image.DecompressionBombError)


class VisionHandler(BaseHandler):
    """Images in, one stacked batch tensor out; subclasses choose ``image_processing``."""

    # A PIL image -> a C x H x W tensor. Subclasses replace it (a torchvision Compose works too).
    image_processing: Callable[[Image.Image], torch.Tensor] = ToTensor()

    def __init__(self) -> None:
        super().__init__()
        self.ig: Any = None

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        if not context.system_properties.get("limit_max_image_pixels", True):
            Image.MAX_IMAGE_PIXELS = None
        self.initialized = True

    @timed
    def preprocess(self, data: list[Any]) -> torch.Tensor:
        images = [self._image_tensor(idx, row) for idx, row in enumerate(data)]
        try:
            return torch.stack(images).to(self.device)
        except RuntimeError as exc:
            raise PredictionException(
                f"the images of this batch differ in size after processing: {exc}", 400) from exc

    def _image_tensor(self, idx: int, row: Any) -> torch.Tensor:
        value = image_value(row)
        if isinstance(value, str):
            value = decode_base64(idx, value)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return self.image_processing(open_image(idx, bytes(value)))
        try:
            return torch.as_tensor(value, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise PredictionException(f"input of request {idx} is neither an image nor a list of "
                                      f"numbers", 400) from exc

    def get_insights(self, tensor_data: torch.Tensor, _: Any, target: Any = 0) -> list[Any]:
        """Integrated gradients of the batch (needs captum, as TorchServe's does)."""
        if self.ig is None:
            self.ig = _integrated_gradients(self.model)
        return self.ig.attribute(tensor_data, target=target, n_steps=15).tolist()


def image_value(row: Any) -> Any:
    """A request's image: its "data" or "body" value (a bare value from an envelope as is)."""
    if not isinstance(row, dict):
        return row
    value = row.get("data") or row.get("body")
    if isinstance(value, dict):
        value = value.get("data") or value.get("body") or value.get("b64")
    return value


def decode_base64(idx: int, text: str) -> bytes:
    try:
        return base64.b64decode(text)
    except (binascii.Error, ValueError) as exc:
        raise PredictionException(f"input of request {idx} is a string but not base64: {exc}",
                                  400) from exc


def open_image(idx: int, payload: bytes) -> Image.Image:
    """The decoded image; unreadable bytes are the client's error (400), not the handler's."""
    try:
        image = Image.open(io.BytesIO(payload))
        image.load()
    except _UNREADABLE as exc:
        reason = "an unknown format" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise PredictionException(f"input of request {idx} is not an image PIL can read "
                                  f"({len(payload)} bytes, {reason})", 400) from exc
    return image


def _integrated_gradients(model: Any) -> Any:
    try:
        from captum.attr import IntegratedGradients
    except ImportError as exc:
        raise PredictionException("explanations need captum, which is not installed", 501) \
            from exc
    return IntegratedGradients(model)
