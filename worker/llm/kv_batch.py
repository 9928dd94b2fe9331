"""The running batch's KV cache: one row per sequence, left-padded to a common length.

Sequences that join in one step are prefilled together (their prompts padded on the left); they
join by being padded on the left to the batch's length (or the batch to theirs) and stacked as
new rows. Every decode step
appends one column for all rows at once, the attention mask hides each row's padding and its
position ids count only its own tokens, so a row computes exactly what its sequence would compute
alone. A sequence that leaves takes its row with it, and columns that only padding holds are cut.

The cache is a transformers ``DynamicCache`` whose layers keep ``keys``/``values`` tensors shaped
[batch, kv_heads, length, head_dim]; the model appends to them in place during the forward pass.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class KVBatch:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.ids: list[str] = []          # the row of each sequence, in order
        self.cache: Any = None            # a DynamicCache with len(ids) rows
        self.mask: torch.Tensor | None = None   # [rows, length] 1: a token, 0: padding

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def length(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[1])

    def add(self, sequence_ids: list[str], cache: Any, mask: torch.Tensor) -> None:
        """Stack prefilled sequences as rows: ``cache`` holds one row each, ``mask`` [rows,
        length] says which of its columns are tokens (a prefill pads its prompts on the left)."""
        if self.cache is None or self.mask is None:
            self.cache, self.mask, self.ids = cache, mask, list(sequence_ids)
            return
        length = int(mask.shape[1])
        width = max(self.length, length)
        for mine, theirs in zip(layers(self.cache), layers(cache), strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, width), _pad_left(theirs.keys, width)])
            mine.values = torch.cat([_pad_left(mine.values, width),
                                     _pad_left(theirs.values, width)])
        self.mask = torch.cat([F.pad(self.mask, (width - self.length, 0)),
                               F.pad(mask, (width - length, 0))])
        self.ids.extend(sequence_ids)

    def keep(self, wanted: set[str]) -> None:
        """Only the rows of ``wanted`` sequences stay; columns left all padding are cut."""
        if all(i in wanted for i in self.ids):
            return
        rows = [row for row, i in enumerate(self.ids) if i in wanted]
        if not rows:
            self.ids, self.cache, self.mask = [], None, None
            return
        index = torch.tensor(rows, device=self.device)
        assert self.mask is not None
        mask = self.mask[index]
        first = int(mask.any(dim=0).nonzero()[0])   # the first column any row uses
        for layer in layers(self.cache):
            layer.keys = layer.keys[index, :, first:]
            layer.values = layer.values[index, :, first:]
        self.mask = mask[:, first:]
        self.ids = [self.ids[row] for row in rows]

    def step_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(attention mask, position ids) for one decode step: a column for the new token."""
        assert self.mask is not None
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.ids), 1)], dim=1)
        positions = self.mask.sum(dim=1, keepdim=True) - 1
        return self.mask, positions


def layers(cache: Any) -> list[Any]:
    """The cache's layers, each with ``keys`` and ``values``; a cache of another shape (sliding
    windows, quantized or static caches) cannot be padded and stacked this way."""
    found = getattr(cache, "layers", None)
    if not found or not all(hasattr(layer, "keys") and hasattr(layer, "values")
                            and not getattr(layer, "is_sliding", False) for layer in found):
        raise TypeError(f"text_generation needs a dynamic KV cache with full attention in every "
                        f"layer; this model's cache is a {type(cache).__name__}")
    return list(found)


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - tensor.shape[-2]
    return F.pad(tensor, (0, 0, missing, 0)) if missing else tensor
