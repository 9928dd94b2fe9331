"""The preload round's model: one 7168 x 7168 float32 layer, 196 MiB of weights.

Big enough that a copy per worker dominates a worker's memory, so sharing it shows.
"""
from __future__ import annotations

import torch

WIDTH = 7168


class BigLinear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(WIDTH, WIDTH, bias=False)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.layer(rows)
