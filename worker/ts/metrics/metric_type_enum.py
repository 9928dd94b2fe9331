"""``ts.metrics.metric_type_enum``: kinds of custom metric (worker/runtime/metric_type_enum.py)."""
from worker.runtime.metric_type_enum import MetricTypes

__all__ = ["MetricTypes"]
