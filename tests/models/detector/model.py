"""A stand-in object detector answering as torchvision's detection models do: per image a dict
of "boxes" (N x 4), "labels" and "scores". Boxes follow the image's size, so a test can see the
image reached the model unresized; the scores (0.9, 0.6, 0.2) straddle the 0.5 threshold."""
import torch
from torch import nn


class TinyDetector(nn.Module):
    def __init__(self):
        super().__init__()
        self.score_scale = nn.Parameter(torch.ones(1))

    def forward(self, images):
        return [self._detect(image) for image in images]

    def _detect(self, image):
        height, width = image.shape[-2:]
        boxes = torch.tensor([[0.0, 0.0, width / 2, height / 2],
                              [width / 4, height / 4, float(width), float(height)],
                              [1.0, 1.0, 2.0, 2.0]])
        scores = torch.tensor([0.9, 0.6, 0.2]) * self.score_scale
        return {"boxes": boxes, "labels": torch.tensor([1, 2, 3]), "scores": scores}
