"""worker.runtime.recorder: what a handler records waits, with TorchServe's default
dimensions, for the batch's RESULT frame."""
from __future__ import annotations

import logging

import pytest

from worker.runtime.context import Context
from worker.runtime import recorder
from worker.runtime.dimension import Dimension
from worker.runtime.metric_type_enum import MetricTypes

pytestmark = pytest.mark.timeout(30)


def context(in_batch: bool = True) -> Context:
    ctx = Context("m", "/models/m", {"model": {"modelName": "m"}}, 2, None, "1.2.3")
    if in_batch:
        ctx.begin_batch(["id0", "id1"], [{}, {}])
    return ctx


def test_add_methods_queue_records_with_model_name_and_level() -> None:
    metrics = context().metrics
    metrics.add_counter("Hits", 2, idx=1, dimensions=[Dimension("Color", "red")])
    metrics.add_time("T", 1.5)
    metrics.add_size("S", 3, unit="kB", metric_type=MetricTypes.HISTOGRAM)
    metrics.add_percent("P", 50, dimensions=[Dimension("Level", "Host")])
    pending = metrics.take_pending()
    assert pending == [
        {"name": "Hits", "unit": "Count", "type": "counter", "value": 2,
         "dimensions": [["Color", "red"], ["ModelName", "m"], ["Level", "Model"]],
         "request_id": "id1"},   # idx 1's request: the metrics log's requestID
        {"name": "T", "unit": "Milliseconds", "type": "gauge", "value": 1.5,
         "dimensions": [["ModelName", "m"], ["Level", "Model"]]},
        {"name": "S", "unit": "Kilobytes", "type": "histogram", "value": 3,
         "dimensions": [["ModelName", "m"], ["Level", "Model"]]},
        {"name": "P", "unit": "Percent", "type": "gauge", "value": 50,
         "dimensions": [["Level", "Host"], ["ModelName", "m"]]},   # the handler's Level stays
    ]
    assert metrics.take_pending() == []   # sent once
    assert metrics.values("Hits") == [2]   # still kept for the handler's own reading


def test_outside_a_batch_level_is_error_and_cached_metrics_keep_their_dimensions() -> None:
    metrics = context(in_batch=False).metrics
    metrics.add_time("LoadTime", 10)
    metrics.add_error("Failures", 1)
    metric = metrics.add_metric_to_cache("Cached", "ms", ["Stage"], MetricTypes.GAUGE)
    metric.add_or_update(4, ["pre"])
    assert [(r["name"], r["dimensions"]) for r in metrics.take_pending()] == [
        ("LoadTime", [["ModelName", "m"], ["Level", "Error"]]),
        ("Failures", [["Level", "Error"], ["ModelName", "m"]]),
        ("Cached", [["Stage", "pre"]]),
    ]


def test_one_batch_sends_at_most_max_pending_records(monkeypatch, caplog) -> None:
    monkeypatch.setattr(recorder, "MAX_PENDING", 3)
    metrics = context().metrics
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            metrics.add_counter("C", 1)
    assert len(metrics.take_pending()) == 3
    metrics.add_counter("C", 1)
    assert len(metrics.take_pending()) == 1
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            metrics.add_counter("C", 1)
    assert len(metrics.take_pending()) == 3
    assert len(caplog.records) == 1   # said once, not once a batch
