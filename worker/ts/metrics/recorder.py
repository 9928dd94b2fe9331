"""``ts.metrics.recorder``: what ``context.metrics`` is (worker/runtime/recorder.py)."""
from worker.runtime.recorder import Metric, MetricRecord, MetricsRecorder

__all__ = ["Metric", "MetricRecord", "MetricsRecorder"]
