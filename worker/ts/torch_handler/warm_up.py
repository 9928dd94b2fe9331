"""Warm-up: a handler's own ``handle`` run on configured requests after its ``initialize`` and
before the worker reports the model loaded (torchd's; TorchServe has no such step).

``torch.compile`` is lazy: it compiles on the first call, and again when the batch size first
changes. Without a warm-up the first clients pay those compiles (seconds to minutes). Each
request runs alone, then all of them together as one batch, so the graph for one request and
the one for a dynamic batch are both compiled before the worker is READY.

The requests run as the worker runs a batch: the context holds their ids and headers
(``context.begin_batch``) and a stream writer that drops streamed parts, and is reset after.
"""
from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from typing import Any

from worker.eventloop import settle

logger = logging.getLogger(__name__)

# A warm-up request arrives as a JSON body does (codec.decode_value: the parsed value).
HEADERS = {"content-type": "application/json"}
Handle = Callable[[list[Any], Any], Any]


class WarmUpError(RuntimeError):
    """A warm-up request failed: the model does not load."""


def warm_up_batches(bodies: list[Any]) -> list[list[Any]]:
    """Each body alone, then (when there are several) all of them as one batch."""
    batches = [[body] for body in bodies]
    if len(bodies) > 1:
        batches.append(list(bodies))
    return batches


def run_warm_up(handle: Handle, context: Any, bodies: list[Any], compiled_with: str = "") -> None:
    """Run ``handle`` on each batch of ``warm_up_batches(bodies)``. ``compiled_with`` (the
    torch.compile backend, if any) goes into the error of a failing request."""
    started = time.perf_counter()
    batches = warm_up_batches(bodies)
    try:
        for number, batch in enumerate(batches, 1):
            _run_batch(handle, context, batch, f"warmup-{number}", compiled_with)
    finally:
        _reset(context)
    logger.info("warm-up: %d request(s) alone%s in %.2f s", len(bodies),
                " and as one batch" if len(bodies) > 1 else "", time.perf_counter() - started)


def _run_batch(handle: Handle, context: Any, batch: list[Any], tag: str,
               compiled_with: str) -> None:
    ids = [f"{tag}-{index}" for index in range(len(batch))]
    context.begin_batch(ids, [dict(HEADERS) for _ in batch])
    context.stream_writer = _drop_parts
    rows = [{"body": copy.deepcopy(body)} for body in batch]   # a handler may change its input
    what = f"warm-up batch {tag} ({len(batch)} request(s))"
    if compiled_with:
        what += f" of the model compiled with backend {compiled_with}"
    try:
        output = settle(handle(rows, context))
    except Exception as exc:
        raise WarmUpError(f"{what} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(output, list) or len(output) != len(batch):
        size = len(output) if isinstance(output, list) else type(output).__name__
        raise WarmUpError(f"{what} answered {size} for {len(batch)} request(s)")


def _drop_parts(ret: Any, id_map: dict[int, str], message: str, code: int) -> None:
    """Streamed parts of a warm-up request have no client."""


def _reset(context: Any) -> None:
    context.request_ids = None
    context.request_processor = []
    context.stream_writer = None
