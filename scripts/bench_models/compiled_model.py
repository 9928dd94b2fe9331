"""The compiled round's eager model: a 64-512-512-10 MLP (the archive's modelFile).

BaseHandler instantiates the one nn.Module class of this file and loads the archive's state_dict
into it; ``pt2`` in model-config.yaml then compiles it (or not, for the eager archive).
"""
from __future__ import annotations

import torch

IN_FEATURES = 64
HIDDEN = 512
OUT_FEATURES = 10


class CompiledMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(IN_FEATURES, HIDDEN), torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN, OUT_FEATURES))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.layers(rows)
