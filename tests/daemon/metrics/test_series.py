"""daemon.metrics.series: drive every update, render, read the exposition back with the parser."""
from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from daemon.metrics.configured import MetricsOptions
from daemon.metrics.host import HOST_METRICS
from daemon.metrics.tally import Tally
from daemon.metrics import CONTENT_TYPE, WORKER_STATES, Metrics

HOST = "testhost"


def scrape(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from a rendered exposition."""
    payload, content_type = metrics.render()
    assert content_type == CONTENT_TYPE
    samples = {}
    for family in text_string_to_metric_families(payload.decode("utf-8")):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def series_of(samples: dict, model: str, version: str) -> list:
    return [key for key in samples
            if dict(key[1]).get("model_name") == model
            and dict(key[1]).get("model_version") == version]


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(hostname=HOST)


def ts(model: str = "mlp", version: str = "1.0") -> dict[str, str]:
    return {"model_name": model, "model_version": version, "hostname": HOST}


def test_torchserve_series_keep_torchserve_names_and_labels(metrics: Metrics) -> None:
    metrics.observe_request("mlp", "1.0", 200, queue_us=40, total_us=1000)
    metrics.count_status(200)
    text = metrics.render()[0].decode()
    # Exactly TorchServe's sample names: no _total/_created added by the client library.
    for name in ("ts_inference_requests_total", "ts_inference_latency_microseconds",
                 "ts_queue_latency_microseconds"):
        assert f"# TYPE {name} counter\n" in text
        labels = f'model_name="mlp",model_version="1.0",hostname="{HOST}"'
        assert re.search(rf"^{name}\{{{labels}}} ", text, re.MULTILINE)
    for cls in ("2", "4", "5"):
        assert f"# TYPE Requests{cls}XX counter\n" in text
        labels = f'Level="Host",Hostname="{HOST}"'
        assert re.search(rf"^Requests{cls}XX\{{{labels}}} ", text, re.MULTILINE)
    assert "ts_inference_requests_created" not in text and "Requests2XX_created" not in text


def test_observe_request_counts_all_and_times_successes(metrics: Metrics) -> None:
    metrics.observe_request("mlp", "1.0", 200, queue_us=40, total_us=1000)
    metrics.observe_request("mlp", "1.0", 200, queue_us=60, total_us=3000)
    metrics.observe_request("mlp", "1.0", 503, queue_us=5, total_us=7)
    metrics.observe_request("mlp", "1.0", 200, queue_us=1, total_us=2, named_version=False)
    s = scrape(metrics)
    # The parser names counter samples <family>_total whatever the text said.
    assert value(s, "ts_inference_requests_total", **ts()) == 3
    assert value(s, "ts_inference_latency_microseconds_total", **ts()) == 4000
    assert value(s, "ts_queue_latency_microseconds_total", **ts()) == 100
    assert value(s, "ts_inference_requests_total", **ts(version="default")) == 1
    assert value(s, "ts_inference_latency_microseconds_total", **ts(version="default")) == 2
    mv = {"model_name": "mlp", "model_version": "1.0"}
    # torchd's histogram always carries the resolved version, and only successes.
    assert value(s, "torchd_request_latency_seconds_count", **mv) == 3
    assert value(s, "torchd_request_latency_seconds_sum", **mv) == pytest.approx(0.004002)
    assert value(s, "torchd_request_latency_seconds_bucket", le="0.001", **mv) == 2  # 2 µs, 1 ms
    assert value(s, "torchd_request_latency_seconds_bucket", le="0.0025", **mv) == 2
    assert value(s, "torchd_request_latency_seconds_bucket", le="0.005", **mv) == 3


def test_count_status_by_class(metrics: Metrics) -> None:
    for status in (200, 201, 202, 206, 400, 404, 404, 500, 503, 504, 507, 101, 302):
        metrics.count_status(status)
    s = scrape(metrics)
    host = {"Level": "Host", "Hostname": HOST}
    assert value(s, "Requests2XX_total", **host) == 4
    assert value(s, "Requests4XX_total", **host) == 3
    assert value(s, "Requests5XX_total", **host) == 4


def test_status_counters_start_at_zero(metrics: Metrics) -> None:
    s = scrape(metrics)
    for cls in "245":
        assert value(s, f"Requests{cls}XX_total", Level="Host", Hostname=HOST) == 0


def test_torchd_gauges_counters_histograms(metrics: Metrics) -> None:
    mv = {"model_name": "mlp", "model_version": "2.0"}
    metrics.set_queue_depth("mlp", "2.0", 7)
    metrics.set_inflight("mlp", "2.0", 9)
    metrics.set_worker_states("mlp", "2.0", {"READY": 2, "BACKOFF": 1})
    metrics.worker_restarted("mlp", "2.0")
    metrics.worker_restarted("mlp", "2.0")
    for size in (1, 3, 3, 64, 100):
        metrics.observe_batch("mlp", "2.0", size)
    metrics.set_worker_rss("mlp", "2.0", "9000", 123456789)
    metrics.set_worker_rss("mlp", "2.0", "9001", 1000)
    metrics.autoscaled("mlp", "2.0", "up")
    metrics.autoscaled("mlp", "2.0", "up")
    metrics.autoscaled("mlp", "2.0", "down")
    metrics.set_llm_requests("mlp", "2.0", 5, 2)
    s = scrape(metrics)
    assert value(s, "torchd_queue_depth", **mv) == 7
    assert value(s, "torchd_inflight_requests", **mv) == 9
    assert value(s, "llm_num_requests_running", **mv) == 5
    assert value(s, "llm_num_requests_waiting", **mv) == 2
    expected_states = {state: 0 for state in WORKER_STATES} | {"READY": 2, "BACKOFF": 1}
    for state, count in expected_states.items():
        assert value(s, "torchd_workers", state=state, **mv) == count
    assert value(s, "torchd_worker_restarts_total", **mv) == 2
    assert value(s, "torchd_batch_size_count", **mv) == 5
    assert value(s, "torchd_batch_size_sum", **mv) == 171
    buckets = {"1.0": 1, "2.0": 1, "4.0": 3, "8.0": 3, "16.0": 3, "32.0": 3, "64.0": 4, "+Inf": 5}
    for le, count in buckets.items():
        assert value(s, "torchd_batch_size_bucket", le=le, **mv) == count
    assert value(s, "torchd_worker_rss_bytes", worker_id="9000", **mv) == 123456789
    assert value(s, "torchd_worker_rss_bytes", worker_id="9001", **mv) == 1000
    assert value(s, "torchd_autoscale_events_total", direction="up", **mv) == 2
    assert value(s, "torchd_autoscale_events_total", direction="down", **mv) == 1


def test_worker_states_reset_absent_states_and_keep_new_ones(metrics: Metrics) -> None:
    metrics.set_worker_states("mlp", "1.0", {"READY": 3, "DRAINING": 1})
    metrics.set_worker_states("mlp", "1.0", {"FAILED": 1})
    s = scrape(metrics)
    mv = {"model_name": "mlp", "model_version": "1.0"}
    assert value(s, "torchd_workers", state="READY", **mv) == 0
    assert value(s, "torchd_workers", state="DRAINING", **mv) == 0
    assert value(s, "torchd_workers", state="FAILED", **mv) == 1


def test_autoscaled_rejects_unknown_direction(metrics: Metrics) -> None:
    with pytest.raises(ValueError):
        metrics.autoscaled("mlp", "1.0", "sideways")


def test_forget_worker_removes_only_that_worker(metrics: Metrics) -> None:
    metrics.set_worker_rss("mlp", "1.0", "9000", 10)
    metrics.set_worker_rss("mlp", "1.0", "9001", 20)
    metrics.set_worker_gpu_memory("mlp", "1.0", "9000", 30)
    metrics.set_worker_gpu_memory("mlp", "1.0", "9001", 40)
    metrics.forget_worker("mlp", "1.0", "9000")
    metrics.forget_worker("mlp", "1.0", "9999")  # unknown: no error
    s = scrape(metrics)
    mv = {"model_name": "mlp", "model_version": "1.0"}
    assert value(s, "torchd_worker_rss_bytes", worker_id="9000", **mv) is None
    assert value(s, "torchd_worker_rss_bytes", worker_id="9001", **mv) == 20
    assert value(s, "torchd_worker_gpu_memory_bytes", worker_id="9000", **mv) is None
    assert value(s, "torchd_worker_gpu_memory_bytes", worker_id="9001", **mv) == 40


def test_gpu_series_as_torchserve_names_them(metrics: Metrics) -> None:
    metrics.set_gpu_usage(0, 5, 0.43, 612.0)
    metrics.set_gpu_usage(1, 80, 50.0, 71000.0)
    s = scrape(metrics)
    gpu0 = {"Level": "Host", "DeviceId": "0", "Hostname": HOST}
    assert value(s, "GPUUtilization", **gpu0) == 5
    assert value(s, "GPUMemoryUtilization", **gpu0) == 0.43
    assert value(s, "GPUMemoryUsed", **gpu0) == 612
    metrics.forget_gpu(1)
    s = scrape(metrics)
    assert value(s, "GPUUtilization", Level="Host", DeviceId="1", Hostname=HOST) is None
    assert value(s, "GPUMemoryUsed", **gpu0) == 612


def drive_everything(metrics: Metrics, model: str, version: str) -> None:
    metrics.observe_request(model, version, 200, 1, 10)
    metrics.observe_request(model, version, 200, 1, 10, named_version=False)
    metrics.observe_batch(model, version, 2)
    metrics.set_queue_depth(model, version, 1)
    metrics.set_inflight(model, version, 2)
    metrics.set_llm_requests(model, version, 3, 4)
    metrics.set_worker_states(model, version, {"READY": 1})
    metrics.worker_restarted(model, version)
    metrics.set_worker_rss(model, version, "9000", 1)
    metrics.set_worker_gpu_memory(model, version, "9000", 1 << 20)
    metrics.autoscaled(model, version, "up")
    metrics.autoscaled(model, version, "down")


def test_host_series_as_torchserve_names_them(metrics: Metrics) -> None:
    metrics.set_host_usage({"CPUUtilization": 12.5, "MemoryUsed": 900.0, "DiskAvailable": 3.25})
    s = scrape(metrics)
    host = {"Level": "Host", "Hostname": HOST}
    assert (value(s, "CPUUtilization", **host), value(s, "MemoryUsed", **host),
            value(s, "DiskAvailable", **host)) == (12.5, 900.0, 3.25)
    metrics.set_host_usage({"CPUUtilization": 50.0})
    assert value(scrape(metrics), "CPUUtilization", **host) == 50.0


def test_queue_time_is_the_last_answered_requests_wait(metrics: Metrics) -> None:
    host = {"Level": "Host", "Hostname": HOST}
    assert value(scrape(metrics), "QueueTime", **host) is None    # nothing answered yet
    metrics.observe_request("mlp", "1.0", 200, 2500.0, 9000.0)
    metrics.observe_request("mlp", "1.0", 503, 99000.0, 99000.0)  # refused: not a wait
    assert value(scrape(metrics), "QueueTime", **host) == 2.5
    metrics.observe_request("other", "2.0", 200, 500.0, 900.0)
    assert value(scrape(metrics), "QueueTime", **host) == 0.5


def test_worker_load_time_per_worker_as_torchserve_names_workers(metrics: Metrics) -> None:
    metrics.worker_loaded("mlp", "1.0", "9000", 1.25)
    metrics.worker_loaded("mlp", "1.0", "9001", 0.5)
    metrics.worker_loaded("big", "2.0", "9002", 3.0)
    s = scrape(metrics)
    named = {"Level": "Host", "Hostname": HOST}
    assert value(s, "WorkerLoadTime", WorkerName="W-9000-mlp_1.0", **named) == 1250.0
    assert value(s, "WorkerLoadTime", WorkerName="W-9001-mlp_1.0", **named) == 500.0
    metrics.forget_worker("mlp", "1.0", "9000")
    metrics.set_worker_rss("big", "2.0", "9002", 10)
    metrics.forget_model("big", "2.0")
    s = scrape(metrics)
    assert [dict(labels)["WorkerName"] for name, labels in s if name == "WorkerLoadTime"] \
        == ["W-9001-mlp_1.0"]


def test_system_metrics_off_leaves_their_families_out() -> None:
    metrics = Metrics(hostname=HOST, options=MetricsOptions(system=False))
    metrics.set_host_usage({"CPUUtilization": 12.5})
    metrics.set_gpu_usage(0, 5, 0.43, 612.0)
    out = metrics.render()[0].decode()
    for name in (*HOST_METRICS, "GPUUtilization", "GPUMemoryUsed", "GPUMemoryUtilization"):
        assert name not in out, name
    assert "Requests2XX" in out


def test_forget_model_removes_every_series_of_that_version(metrics: Metrics) -> None:
    drive_everything(metrics, "mlp", "1.0")
    drive_everything(metrics, "mlp", "2.0")
    drive_everything(metrics, "other", "1.0")
    before = scrape(metrics)
    assert series_of(before, "mlp", "1.0") and series_of(before, "mlp", "default")

    metrics.forget_model("mlp", "1.0")
    s = scrape(metrics)
    assert series_of(s, "mlp", "1.0") == []
    # Another version of the model remains, so its "default" ts_* series stay.
    assert series_of(s, "mlp", "default")
    assert len(series_of(s, "mlp", "2.0")) == len(series_of(before, "mlp", "2.0"))

    metrics.forget_model("mlp", "2.0")
    s = scrape(metrics)
    assert series_of(s, "mlp", "2.0") == [] and series_of(s, "mlp", "default") == []
    assert len(series_of(s, "other", "1.0")) == len(series_of(before, "other", "1.0"))
    metrics.forget_model("never", "1.0")  # unknown: no error, and nothing else goes
    assert scrape(metrics) == s


def test_instances_are_independent() -> None:
    first, second = Metrics(hostname=HOST), Metrics(hostname=HOST)
    first.set_queue_depth("mlp", "1.0", 5)
    mv = {"model_name": "mlp", "model_version": "1.0"}
    assert value(scrape(first), "torchd_queue_depth", **mv) == 5
    assert value(scrape(second), "torchd_queue_depth", **mv) is None


def test_collect_hook_runs_before_each_render() -> None:
    calls = []

    def refresh() -> None:
        calls.append(1)
        metrics.set_queue_depth("mlp", "1.0", len(calls))

    metrics = Metrics(collect_hook=refresh, hostname=HOST)
    mv = {"model_name": "mlp", "model_version": "1.0"}
    assert value(scrape(metrics), "torchd_queue_depth", **mv) == 1
    assert value(scrape(metrics), "torchd_queue_depth", **mv) == 2


def test_failing_collect_hook_still_renders(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> None:
        raise RuntimeError("psutil exploded")

    metrics = Metrics(collect_hook=broken, hostname=HOST)
    metrics.count_status(200)
    assert value(scrape(metrics), "Requests2XX_total", Level="Host", Hostname=HOST) == 1
    assert "collect hook failed" in caplog.text


def test_label_values_are_escaped(metrics: Metrics) -> None:
    metrics.observe_request('we"ird\\name\n', "1.0", 200, 1, 2)
    s = scrape(metrics)
    assert value(s, "ts_inference_requests_total", **ts(model='we"ird\\name\n')) == 1


def test_default_hostname_is_this_host() -> None:
    import socket
    assert Metrics().hostname == socket.gethostname()


def test_a_tally_adds_to_its_histogram_what_observing_it_directly_would():
    registry = CollectorRegistry()
    direct = Histogram("direct", "d", buckets=(0.001, 0.01, 1.0), registry=registry)
    tallied = Histogram("tallied", "t", buckets=(0.001, 0.01, 1.0), registry=registry)
    tally = Tally(tallied)

    def samples(name: str) -> dict:
        return {(s.name.replace(name, ""), s.labels.get("le")): s.value
                for metric in registry.collect() if metric.name == name
                for s in metric.samples if not s.name.endswith("_created")}

    for value in (0.0005, 0.001, 0.002, 0.01, 0.5, 1.0, 3.0):   # on and between the bounds
        direct.observe(value)
        tally.observe(value)
    assert samples("tallied")[("_count", None)] == 0   # nothing until the flush
    tally.flush()
    assert samples("tallied") == samples("direct")
    tally.flush()   # what was flushed is not added twice
    assert samples("tallied") == samples("direct")
