"""torch's thread pools sized as the daemon says (its share of the CPUs, see
daemon/workers/threads.py), before the handler's first torch op."""
from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def set_torch_threads(count: int, starting: bool) -> None:
    """``count`` intra-op threads (and inter-op ones when ``starting``: torch fixes that pool
    at its first use, so a running worker keeps the inter-op count it started with). 0 leaves
    torch's defaults."""
    if count <= 0:
        return
    import torch   # already imported in a zygote-forked worker; a handler needs it anyway
    torch.set_num_threads(count)
    if starting:
        try:
            torch.set_num_interop_threads(count)
        except RuntimeError as exc:   # something ran parallel work already
            logger.warning("torch inter-op threads stay at %d: %s",
                           torch.get_num_interop_threads(), exc)
    logger.info("torch threads: %d intra-op, %d inter-op", torch.get_num_threads(),
                torch.get_num_interop_threads())
