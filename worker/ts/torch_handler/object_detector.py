"""``ObjectDetector`` (``--handler object_detector``): labelled boxes above a score threshold.

Images go to the model as ToTensor gives them (no resize, so a batch's images must share a
size); the model answers one dict per image with "boxes" (N x 4), "labels" and "scores"
(torchvision's detection models). Each image answers a list of ``{label: [x1, y1, x2, y2],
"score": s}`` for the detections scoring at least ``threshold`` (0.5), labels mapped through
``index_to_name.json`` when the archive has one.
"""
from __future__ import annotations

from typing import Any

from worker.ts.handler_utils.image_transforms import Compose, ToRGB, ToTensor
from worker.ts.torch_handler.vision_handler import VisionHandler
from worker.ts.utils.util import map_class_to_label


class ObjectDetector(VisionHandler):
    image_processing = Compose([ToRGB(), ToTensor()])
    threshold = 0.5

    def postprocess(self, data: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        return [self._detections(image) for image in data]

    def _detections(self, image: dict[str, Any]) -> list[dict[str, Any]]:
        keep = image["scores"] >= self.threshold
        boxes, labels, scores = (image[key][keep].tolist() for key in ("boxes", "labels", "scores"))
        detections = []
        for box, label, score in zip(boxes, labels, scores):
            detection = map_class_to_label([[box]], self.mapping, [[label]])[0]
            detection["score"] = score
            detections.append(detection)
        return detections
