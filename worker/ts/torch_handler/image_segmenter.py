"""``ImageSegmenter`` (``--handler image_segmenter``): the best class of every pixel.

ImageNet preprocessing as ``ImageClassifier``; the model answers a dict whose "out" is the
N x classes x H x W score tensor (torchvision's segmentation models), or that tensor itself. Each
image answers an H x W x 2 list: per pixel [class index, its probability] (TorchServe returns
only the top class per pixel to keep responses small).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from worker.ts.handler_utils.image_transforms import imagenet_transform
from worker.ts.torch_handler.vision_handler import VisionHandler


class ImageSegmenter(VisionHandler):
    image_processing = imagenet_transform()

    def postprocess(self, data: Any) -> list[Any]:
        scores = data["out"] if isinstance(data, dict) else data
        best = torch.max(F.softmax(scores, dim=1), dim=1)
        pairs = torch.stack([best.indices.to(best.values.dtype), best.values], dim=3)
        return pairs.tolist()
