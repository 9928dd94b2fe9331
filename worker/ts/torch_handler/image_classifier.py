"""``ImageClassifier`` (``--handler image_classifier``): the top classes of each image.

ImageNet preprocessing (Resize 256, CenterCrop 224, ToTensor, Normalize with ImageNet's mean and
std), then softmax over the model's logits; each image answers one {label: probability} dict of
its ``topk`` (5) best classes, labelled through ``index_to_name.json`` when the archive has one.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from worker.ts.handler_utils.image_transforms import imagenet_transform
from worker.ts.handler_utils.timer import timed
from worker.ts.torch_handler.vision_handler import VisionHandler
from worker.ts.utils.util import map_class_to_label


class ImageClassifier(VisionHandler):
    """Top-k classes per image; ``set_max_result_classes`` changes k."""

    topk = 5
    image_processing = imagenet_transform()

    def set_max_result_classes(self, topk: int) -> None:
        self.topk = topk

    def get_max_result_classes(self) -> int:
        return self.topk

    @timed
    def postprocess(self, data: torch.Tensor) -> list[dict[str, Any]]:
        probabilities = F.softmax(data, dim=1)
        # A model with fewer classes than topk answers all of them (torch.topk would raise).
        k = min(self.topk, probabilities.shape[1])
        probs, classes = torch.topk(probabilities, k, dim=1)
        return map_class_to_label(probs.tolist(), self.mapping, classes.tolist())
