"""Where a worker's compiler caches go: the model version's own directory, shared by its workers.

The daemon names one directory per model version (LOAD's ``compile_cache_dir``) unless
``TORCHINDUCTOR_CACHE_DIR`` was set for it, which every worker then inherits. inductor's FX graph
and AOTAutograd caches, and Triton's kernels beneath them, live there: the first worker compiles,
the version's other and restarted workers load what it compiled (seconds instead of tens).
"""
from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def use_compile_cache(directory: str | None) -> None:
    """Point inductor at ``directory`` before the handler loads (it reads the variable when it
    first caches, so setting it now is in time)."""
    if not directory:
        return
    os.makedirs(directory, exist_ok=True)
    os.environ[INDUCTOR_CACHE_ENV] = directory
    logger.debug("compiler caches in %s", directory)
