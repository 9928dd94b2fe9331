"""daemon.metrics.handlers: handler records become TorchServe-labelled series, capped per model."""
from __future__ import annotations

import logging

import pytest

from daemon.metrics.handlers import MAX_UNAPPLIED, HandlerMetrics
from daemon.metrics import Metrics
from protocol import messages

pytestmark = pytest.mark.timeout(30)


def rec(name: str, kind: str, value: float, **dims: str) -> dict:
    pairs = [[k, v] for k, v in dims.items()]
    return messages.metric(name, "Count", kind, value, pairs + [["ModelName", "m"],
                                                                 ["Level", "Model"]])


def lines(metrics: HandlerMetrics) -> list[str]:
    return [line for line in metrics.render().decode().splitlines()
            if line and not line.startswith("#")]


def test_counter_gauge_histogram_with_torchserve_labels() -> None:
    hm = HandlerMetrics("host1")
    hm.record("m", [rec("Hits", "counter", 2, Color="red"), rec("Hits", "counter", 3,
                                                                Color="red"),
                    rec("HandlerTime", "gauge", 1.5), rec("HandlerTime", "gauge", 2.25),
                    rec("Sizes", "histogram", 0.3)])
    out = lines(hm)
    assert 'Hits{Color="red",ModelName="m",Level="Model",Hostname="host1"} 5.0' in out
    assert 'HandlerTime{Hostname="host1",Level="Model",ModelName="m"} 2.25' in out
    assert 'Sizes_count{Hostname="host1",Level="Model",ModelName="m"} 1.0' in out
    assert "# TYPE Hits counter" in hm.render().decode()   # no _total, as TorchServe
    assert "# HELP Hits Torchserve prometheus counter metric with unit: Count" in \
        hm.render().decode()


def test_a_name_filter_keeps_only_the_families_asked_for() -> None:
    hm = HandlerMetrics("h")
    hm.record("m", [rec("Hits", "counter", 1), rec("Load", "gauge", 2),
                    rec("Sizes", "histogram", 0.3)])
    shown = hm.render(frozenset({"Hits", "Sizes"})).decode()
    assert "# TYPE Hits counter" in shown and "# TYPE Sizes histogram" in shown
    assert "Load" not in shown
    assert hm.render(frozenset({"nothing"})) == b""


def test_bad_records_are_skipped_and_the_rest_applied(caplog) -> None:
    hm = HandlerMetrics("h")
    with caplog.at_level(logging.WARNING):
        hm.record("m", [{"name": "only", "type": "gauge"}, rec("bad name", "gauge", 1),
                        rec("ts_inference_requests_total", "counter", 1),
                        rec("G", "summary", 1), rec("G", "gauge", "not a number"),
                        rec("Fine", "gauge", 7), rec("ts_handler_preprocess", "gauge", 3)])
    assert lines(hm) == ['Fine{Hostname="h",Level="Model",ModelName="m"} 7.0',
                         'ts_handler_preprocess{Hostname="h",Level="Model",ModelName="m"} 3.0']
    assert len(caplog.records) == 4


def test_a_name_keeps_its_first_kind_and_dimensions() -> None:
    hm = HandlerMetrics("h")
    hm.record("m", [rec("X", "gauge", 1), rec("X", "counter", 1), rec("X", "gauge", 2, a="b")])
    assert lines(hm) == ['X{Hostname="h",Level="Model",ModelName="m"} 1.0']


def test_series_cap_per_model_warns_once(caplog) -> None:
    hm = HandlerMetrics("h", max_series=3)
    with caplog.at_level(logging.WARNING):
        hm.record("m", [rec("C", "counter", 1, i=str(i)) for i in range(10)])
        hm.record("m", [rec("C", "counter", 1, i="0"), rec("C", "counter", 1, i="9")])
        hm.record("other", [rec("C", "counter", 1, i="x")])
        hm.record("m", [rec("HandlerTime", "gauge", 1.0), rec("PredictionTime", "gauge", 2.0)])
    assert hm.series_count("m") == 3
    assert 'HandlerTime{Hostname="h",Level="Model",ModelName="m"} 1.0' in lines(hm)
    assert 'C{i="0",ModelName="m",Level="Model",Hostname="h"} 2.0' in lines(hm)
    assert not any('i="9"' in line for line in lines(hm))
    assert hm.series_count("other") == 1
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["model m: its handler metrics reached 3 series; new series are dropped"]


def test_forget_removes_a_models_series_and_empty_families() -> None:
    hm = HandlerMetrics("h")
    hm.record("a", [rec("Shared", "gauge", 1, k="a"), rec("OnlyA", "histogram", 1)])
    hm.record("b", [rec("Shared", "gauge", 2, k="b")])
    hm.forget("a")
    text = hm.render().decode()
    assert "OnlyA" not in text and 'k="a"' not in text and 'k="b"' in text
    hm.record("a", [rec("OnlyA", "histogram", 1)])   # back again after a new registration
    assert "OnlyA_count" in hm.render().decode()


def test_metrics_renders_handler_series_and_forgets_them_with_the_last_version() -> None:
    metrics = Metrics(hostname="h")
    for version in ("1.0", "2.0"):   # served requests make the versions known
        metrics.observe_request("m", version, 200, 1.0, 2.0)
    metrics.record_handler_metrics("m", "1.0", [rec("Custom", "counter", 1)])
    metrics.record_handler_metrics("m", "2.0", [rec("Custom", "counter", 1)])
    assert b'Custom{ModelName="m",Level="Model",Hostname="h"} 2.0' in metrics.render()[0]
    metrics.forget_model("m", "1.0")
    assert b"Custom{" in metrics.render()[0]
    metrics.forget_model("m", "2.0")
    assert b"Custom" not in metrics.render()[0]


def test_records_wait_for_a_scrape_but_never_without_bound() -> None:
    hm = HandlerMetrics("h")
    hm.record("m", [rec("Late", "counter", 1)])
    assert hm._unapplied   # taken, not yet applied
    assert 'Late{ModelName="m",Level="Model",Hostname="h"} 1.0' in lines(hm)
    for _ in range(MAX_UNAPPLIED):
        hm.record("m", [rec("Late", "counter", 1)])
    assert not hm._unapplied   # applied once that many waited
    # the bound counts records, not results: one result with many records applies at once
    hm.record("m", [rec("Late", "counter", 1)] * (MAX_UNAPPLIED - 1))
    assert hm._unapplied
    hm.record("m", [rec("Late", "counter", 1)])
    assert not hm._unapplied
    hm.record("m", [rec("Gone", "counter", 1)])
    hm.forget("m")
    assert lines(hm) == []
