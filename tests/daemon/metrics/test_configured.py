"""The metrics configuration (issue 27): TorchServe's metrics.yaml read as TorchServe 0.12 reads
it, what it changes on /metrics (handler and frontend series), and the metric log lines of
metrics_mode log and legacy, with an injected clock."""
from __future__ import annotations

import datetime
import logging
from pathlib import Path

import pytest

from daemon.metrics import Metrics
from daemon.config.settings import load_config
from daemon.metrics.configured import MetricsOptions, metrics_options
from daemon.metrics.handlers import HandlerMetrics
from daemon.metrics.metrics_log import MetricsLog, _stamp, java_double
from daemon.metrics.spec import (MetricsConfigError, load_metrics_spec, parse_metrics_spec,
                                  worker_declarations)
from protocol import messages

pytestmark = pytest.mark.timeout(30)

# written as TorchServe's documentation writes one: dimension aliases, both sections
CONFIG = """\
dimensions:
  - &model_name "ModelName"
  - &level "Level"
  - &hostname "Hostname"
ts_metrics:
  counter:
    - name: Requests2XX
      unit: Count
      dimensions: [*level, *hostname]
    - name: ts_inference_requests_total
      unit: Count
      dimensions: ["model_name", "model_version", "hostname"]
model_metrics:
  counter:
    - name: InferenceCount
      unit: count
      dimensions: [*model_name, *level]
  histogram:
    - name: HandlerTime
      unit: ms
      dimensions: [*model_name, *level]
"""
CLOCK = 1796597523.25   # 2026-12-06, in the local time zone the log stamps use


def rec(name: str, kind: str, value: float, request_id: str | None = None,
        **dims: str) -> dict:
    pairs = [[k, v] for k, v in dims.items()]
    return messages.metric(name, "ms", kind, value, pairs + [["ModelName", "m"],
                                                              ["Level", "Model"]], request_id)


def samples(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


@pytest.fixture()
def spec_path(tmp_path: Path) -> Path:
    path = tmp_path / "metrics.yaml"
    path.write_text(CONFIG)
    return path


def test_the_yaml_with_aliases_declares_types_units_and_dimensions(spec_path: Path) -> None:
    spec = load_metrics_spec(spec_path)
    assert set(spec.frontend) == {"Requests2XX", "ts_inference_requests_total"}
    handler_time = spec.model["HandlerTime"]
    assert (handler_time.kind, handler_time.unit) == ("histogram", "ms")
    # the host's name is a model metric's last dimension, as TorchServe adds it
    assert handler_time.dimensions == ("ModelName", "Level", "Hostname")
    assert spec.frontend["Requests2XX"].dimensions == ("Level", "Hostname")


@pytest.mark.parametrize("document, problem", [
    ({"model_metrics": {"gauge": [{"name": "", "unit": "ms"}]}}, "name cannot be empty"),
    ({"model_metrics": {"gauge": [{"name": "X"}]}}, "unit cannot be empty"),
    ({"ts_metrics": {"summary": []}}, "unknown metric types ['summary']"),
    ({"model_metrics": {"gauge": [{"name": "X", "unit": "ms"}],
                        "counter": [{"name": "X", "unit": "ms"}]}}, "declares X twice"),
    ({"model_metrics": {"gauge": [{"name": "X", "unit": "ms", "dimensions": "Level"}]}},
     "dimensions must be a list"),
    ([1, 2], "must be a mapping"),
])
def test_a_configuration_that_breaks_the_rules_says_why(document: object,
                                                        problem: str) -> None:
    with pytest.raises(MetricsConfigError, match=problem.replace("[", r"\[").replace(
            "]", r"\]")):
        parse_metrics_spec(document)


def test_unreadable_yaml_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_metrics: [unclosed\n")
    with pytest.raises(MetricsConfigError, match="not YAML"):
        load_metrics_spec(bad)
    with pytest.raises(MetricsConfigError, match="cannot read"):
        load_metrics_spec(tmp_path / "missing.yaml")


def test_metric_logs_that_cannot_be_written_are_refused_naming_the_setting(tmp_path) -> None:
    """A metrics_location where no directory can be made (/proc, root or not) stops the start
    with the setting named, not a bare path."""
    config = load_config({"metrics_mode": "log", "metrics_location": "/proc/nope"}, {},
                         tmp_path)
    with pytest.raises(MetricsConfigError, match=r"cannot write the metric logs in /proc/nope "
                       r"\(metrics_location, metrics_mode log\): \[Errno 2\]"):
        metrics_options(config)


def test_declared_metrics_take_the_declared_type_others_need_auto_detect(
        spec_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spec = load_metrics_spec(spec_path)
    strict = HandlerMetrics("h", declared=spec.model, auto_detect=False)
    strict.record("m", [rec("HandlerTime", "gauge", 0.4), rec("Custom", "gauge", 7),
                        rec("InferenceCount", "gauge", 2, Extra="x")])
    with caplog.at_level(logging.WARNING, logger="daemon.metrics.handlers"):
        out = strict.render().decode()
    # HandlerTime: a histogram, as declared, though the handler recorded a gauge
    assert "# TYPE HandlerTime histogram" in out
    assert 'HandlerTime_count{Hostname="h",Level="Model",ModelName="m"} 1.0' in samples(out)
    assert "Custom" not in out   # not declared, no auto-detection
    # three dimension values where two are declared: dropped, and said once
    assert "InferenceCount{" not in out
    assert any("InferenceCount" in r.getMessage() and "declares" in r.getMessage()
               for r in caplog.records)
    detecting = HandlerMetrics("h", declared=spec.model, auto_detect=True)
    detecting.record("m", [rec("Custom", "gauge", 7)])
    assert 'Custom{Hostname="h",Level="Model",ModelName="m"} 7.0' in samples(
        detecting.render().decode())


def test_frontend_series_follow_ts_metrics(spec_path: Path) -> None:
    metrics = Metrics(hostname="h", options=MetricsOptions(spec=load_metrics_spec(spec_path)))
    metrics.observe_request("m", "1.0", 200, 10.0, 50.0)
    metrics.count_status(200)
    metrics.count_status(404)
    out = metrics.render()[0].decode()
    assert "Requests2XX{" in out and "ts_inference_requests_total{" in out
    for hidden in ("Requests4XX", "ts_inference_latency_microseconds",
                   "ts_queue_latency_microseconds", "GPUUtilization"):
        assert hidden not in out, hidden
    assert "torchd_request_latency_seconds" in out   # torchd's own series: always shown
    everything = Metrics(hostname="h").render()[0].decode()
    assert "Requests4XX" in everything and "ts_queue_latency_microseconds" in everything


def test_log_mode_writes_torchserves_lines(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "logs", clock=lambda: CLOCK)
    metrics = Metrics(hostname="h", options=MetricsOptions(mode="log", log=log))
    metrics.observe_request("m", "1.0", 200, 10.0, 50.0, named_version=False)
    metrics.count_status(200)
    metrics.handler_metrics.record("m", [rec("HandlerTime", "gauge", 0.42, "req-1")])
    log.close()
    frontend = (tmp_path / "logs" / "ts_metrics.log").read_text().splitlines()
    stamp = frontend[0].split(" - ")[0]
    assert len(stamp) == len("2026-12-06T10:00:00,250") and stamp.endswith(",250")
    assert [line.split(" - ", 1)[1] for line in frontend] == [
        "ts_inference_requests_total.Count:1.0|#model_name:m,model_version:default"
        "|#hostname:h,timestamp:1796597523",
        "ts_inference_latency_microseconds.Microseconds:50.0|#model_name:m,"
        "model_version:default|#hostname:h,timestamp:1796597523",
        "ts_queue_latency_microseconds.Microseconds:10.0|#model_name:m,model_version:default"
        "|#hostname:h,timestamp:1796597523",
        "QueueTime.Milliseconds:0.01|#Level:Host|#hostname:h,timestamp:1796597523",
        "Requests2XX.Count:1.0|#Level:Host|#hostname:h,timestamp:1796597523"]
    model = (tmp_path / "logs" / "model_metrics.log").read_text().splitlines()
    assert [line.split(" - ", 1)[1] for line in model] == [
        "HandlerTime.ms:0.42|#ModelName:m,Level:Model|#hostname:h,requestID:req-1,"
        "timestamp:1796597523"]


def test_log_mode_writes_the_host_and_worker_gauges_in_torchserves_units(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path, clock=lambda: CLOCK)
    metrics = Metrics(hostname="h", options=MetricsOptions(mode="log", log=log))
    metrics.set_host_usage({"CPUUtilization": 12.5, "MemoryUsed": 900.0, "DiskUsage": 41.0})
    metrics.worker_loaded("m", "1.0", "9000", 1.5)
    log.close()
    lines = (tmp_path / "ts_metrics.log").read_text().splitlines()
    assert [line.split(" - ", 1)[1] for line in lines] == [
        "CPUUtilization.Percent:12.5|#Level:Host|#hostname:h,timestamp:1796597523",
        "MemoryUsed.Megabytes:900.0|#Level:Host|#hostname:h,timestamp:1796597523",
        "DiskUsage.Gigabytes:41.0|#Level:Host|#hostname:h,timestamp:1796597523",
        "WorkerLoadTime.Milliseconds:1500.0|#WorkerName:W-9000-m_1.0,Level:Host"
        "|#hostname:h,timestamp:1796597523"]


def test_legacy_mode_keeps_the_ts_counters_off_the_log(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path, clock=lambda: CLOCK)
    metrics = Metrics(hostname="h", options=MetricsOptions(mode="legacy", log=log))
    metrics.observe_request("m", "1.0", 200, 10.0, 50.0)
    metrics.count_status(500)
    log.close()
    lines = (tmp_path / "ts_metrics.log").read_text().splitlines()
    assert [line.split(" - ", 1)[1].split(":")[0] for line in lines] == [
        "QueueTime.Milliseconds", "Requests5XX.Count"]   # the gauges stay in the log


@pytest.mark.parametrize("value, text", [
    (1.0, "1.0"), (0.0, "0.0"), (123.456, "123.456"), (9999999.0, "9999999.0"),
    (1e7, "1.0E7"), (12345678.9, "1.23456789E7"), (1e-4, "1.0E-4"), (0.001, "0.001"),
    (-3e9, "-3.0E9"), (float("nan"), "NaN"), (float("inf"), "Infinity")])
def test_numbers_are_written_as_java_writes_doubles(value: float, text: str) -> None:
    assert java_double(value) == text


@pytest.mark.parametrize("now", [1796597523.25, 1796597523.123, 1796597523.0, 1796597523.0009,
                                 1796597523.9994, 1796597523.9999996, 1796597523.999])
def test_the_time_stamp_is_local_time_to_the_millisecond_as_datetime_writes_it(now: float):
    # made from a once-a-second part: the same text as formatting each line's moment whole
    moment = datetime.datetime.fromtimestamp(now)
    assert _stamp(now) == (moment.strftime("%Y-%m-%dT%H:%M:%S,")
                           + f"{moment.microsecond // 1000:03d}")


def test_what_workers_are_told_a_handler_may_fetch_with_get_metric() -> None:
    """The configuration's model_metrics, Hostname left to the daemon; without one, TorchServe's
    default configuration's HandlerTime and PredictionTime."""
    spec = parse_metrics_spec({"model_metrics": {
        "gauge": [{"name": "RequestBatchSize", "unit": "count", "dimensions": ["ModelName"]}],
        "counter": [{"name": "Calls", "unit": "count", "dimensions": []}]}})
    assert sorted(worker_declarations(spec), key=lambda m: m["name"]) == [
        {"name": "Calls", "type": "counter", "unit": "count", "dimensions": []},
        {"name": "RequestBatchSize", "type": "gauge", "unit": "count",
         "dimensions": ["ModelName"]}]
    assert worker_declarations(None) == [
        {"name": name, "type": "gauge", "unit": "ms", "dimensions": ["ModelName", "Level"]}
        for name in ("HandlerTime", "PredictionTime")]
