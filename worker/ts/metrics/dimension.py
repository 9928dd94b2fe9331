"""``ts.metrics.dimension``: a metric dimension (worker/runtime/dimension.py)."""
from worker.runtime.dimension import Dimension

__all__ = ["Dimension"]
