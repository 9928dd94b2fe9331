"""The next token of each row of a step's logits: greedy (temperature 0) as one argmax for the
batch, sampled rows one by one with their own generator (a request's ``seed`` makes its tokens
repeatable, whatever else shares the batch)."""
from __future__ import annotations

import torch

from worker.llm.requests import SamplingParams


def new_generator(params: SamplingParams, device: torch.device,
                  choice: int = 0) -> torch.Generator | None:
    """The generator of a sampled sequence: seeded with ``seed`` (plus its choice's index, so
    the choices of one request differ and each repeats), else from the system."""
    if params.greedy:
        return None
    generator = torch.Generator(device=device)
    if params.seed is not None:
        generator.manual_seed(params.seed + choice)
    else:
        generator.seed()
    return generator


def next_tokens(logits: torch.Tensor, params: list[SamplingParams],
                generators: list[torch.Generator | None]) -> list[int]:
    """One token per row of ``logits`` [rows, vocab]."""
    tokens = logits.argmax(dim=-1).tolist()
    for row, (p, generator) in enumerate(zip(params, generators)):
        if not p.greedy:
            tokens[row] = sample(logits[row], p, generator)
    return tokens


def sample(logits: torch.Tensor, params: SamplingParams,
           generator: torch.Generator | None) -> int:
    scores = logits.float() / params.temperature
    if 0 < params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if params.top_p < 1.0:
        ordered, order = torch.sort(probs, descending=True)
        # keep the smallest set whose mass reaches top_p (the most likely token always stays)
        drop = ordered.cumsum(dim=-1) - ordered >= params.top_p
        ordered = ordered.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, ordered)
    return int(torch.multinomial(probs, 1, generator=generator))
