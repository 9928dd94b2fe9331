"""/metrics through the real daemon, read with prometheus_client's parser (SPEC 3): requests by
model, Requests2XX/4XX/5XX, queue depth, workers by state, restarts, batch sizes, worker RSS."""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from prometheus_client.parser import text_string_to_metric_families

from daemon.metrics.host import HOST_METRICS
from tests.support.daemon import Daemon
from tests.support.ops import make_store, sample_sum, scrape
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def measured(archive_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("ops-metrics")
    store = make_store(archive_dir, workdir / "store", ["noop", "sleep", "fail513"])
    # no system metrics here (TorchServe's disable_system_metrics); test_handler_metrics's
    # daemon shows them
    d = Daemon(workdir, store, {"heartbeat_interval": 0.5, "disable_system_metrics": True})
    try:
        d.start()
        for name, url, extra in (("ma", "noop.mar", {}), ("mb", "noop.mar", {}),
                                 ("sl", "sleep.mar", {}), ("f5", "fail513.mar", {}),
                                 ("mbatch", "noop.mar", {"batch_size": 4,
                                                         "max_batch_delay": 2000}),
                                 ("mfill", "noop.mar", {"batch_size": 4,
                                                        "max_batch_delay": 2000})):
            response = d.register(url, model_name=name, initial_workers=1, **extra)
            assert response.status_code == 200, response.text
        yield SimpleNamespace(daemon=d)
    finally:
        d.cleanup()


def concurrently(calls: list) -> list:
    results: list = [None] * len(calls)

    def run(index: int) -> None:
        results[index] = calls[index]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_requests_are_counted_by_model(measured):
    d = measured.daemon
    for _ in range(5):
        assert d.infer("POST", "/predictions/ma", data=b"x").status_code == 200
    for _ in range(3):
        assert d.infer("POST", "/predictions/mb", data=b"x").status_code == 200
    assert d.infer("POST", "/predictions/mb/1.0", data=b"x").status_code == 200
    samples = scrape(d)
    assert sample_sum(samples, "ts_inference_requests_total", model_name="ma") == 5
    assert sample_sum(samples, "ts_inference_requests_total", model_name="mb") == 4
    # TorchServe's labels: a path without a version counts under "default".
    assert sample_sum(samples, "ts_inference_requests_total", model_name="mb",
                      model_version="default") == 3
    assert sample_sum(samples, "ts_inference_requests_total", model_name="mb",
                      model_version="1.0") == 1
    assert sample_sum(samples, "ts_inference_latency_microseconds", model_name="ma") > 0
    assert any(name.startswith("ts_queue_latency_microseconds") for name, _ in samples)
    hosts = {dict(labels).get("hostname") for name, labels in samples
             if name.startswith("ts_inference_requests")}
    assert len(hosts) == 1 and None not in hosts


def test_responses_are_counted_by_status_class(measured):
    d = measured.daemon
    before = scrape(d)
    assert d.infer("POST", "/predictions/ma", data=b"x").status_code == 200
    assert d.mgmt("GET", "/models/ma").status_code == 200
    assert d.infer("POST", "/predictions/nobody", data=b"x").status_code == 404
    assert d.infer("POST", "/predictions/f5", json={"fail": True}).status_code == 513
    after = scrape(d)   # scrapes are on the metrics port, which is not counted
    deltas = {cls: sample_sum(after, f"Requests{cls}XX") - sample_sum(before, f"Requests{cls}XX")
              for cls in (2, 4, 5)}
    assert deltas == {2: 2, 4: 1, 5: 1}


def test_queue_depth_and_workers_by_state(measured):
    d = measured.daemon
    calls = [lambda: d.infer("POST", "/predictions/sl", json={"sleep": 1.0}, timeout=30)] * 3
    results: list = []
    client = threading.Thread(target=lambda: results.extend(concurrently(calls)))
    client.start()
    try:
        wait_until(lambda: sample_sum(scrape(d), "torchd_queue_depth", model_name="sl") == 2,
                   timeout=10, what="two requests queued behind the one in flight")
        samples = scrape(d)
        assert sample_sum(samples, "torchd_workers", model_name="sl", state="READY") == 1
        assert sample_sum(samples, "torchd_workers", model_name="sl", state="FAILED") == 0
        # the in-flight gauge counts the one in the worker too (the scrape is a second one:
        # the first request may have been answered by now; each sleeps 1 s)
        inflight = sample_sum(samples, "torchd_inflight_requests", model_name="sl")
        assert inflight == 1 + sample_sum(samples, "torchd_queue_depth", model_name="sl")
    finally:
        client.join(60)
    assert [r.status_code for r in results] == [200] * 3
    assert sample_sum(scrape(d), "torchd_queue_depth", model_name="sl") == 0
    assert sample_sum(scrape(d), "torchd_inflight_requests", model_name="sl") == 0


def test_inflight_counts_a_batch_still_filling(measured):
    d = measured.daemon      # mfill: batch_size 4, max_batch_delay 2 s
    calls = [lambda: d.infer("POST", "/predictions/mfill", data=b"x", timeout=30)] * 2
    results: list = []
    client = threading.Thread(target=lambda: results.extend(concurrently(calls)))
    client.start()
    try:
        wait_until(lambda: sample_sum(scrape(d), "torchd_inflight_requests",
                                      model_name="mfill") == 2, timeout=1.5,
                   what="two requests in flight while their batch fills")
        assert sample_sum(scrape(d), "torchd_queue_depth", model_name="mfill") == 0
    finally:
        client.join(60)
    assert [r.status_code for r in results] == [200] * 2
    assert sample_sum(scrape(d), "torchd_inflight_requests", model_name="mfill") == 0


def test_batch_size_histogram(measured):
    d = measured.daemon
    calls = [lambda: d.infer("POST", "/predictions/mbatch", data=b"x", timeout=30)] * 4
    assert [r.status_code for r in concurrently(calls)] == [200] * 4
    samples = scrape(d)
    assert sample_sum(samples, "torchd_batch_size_count", model_name="mbatch") == 1
    assert sample_sum(samples, "torchd_batch_size_sum", model_name="mbatch") == 4
    assert sample_sum(samples, "torchd_batch_size_bucket", model_name="mbatch", le="2.0") == 0
    assert sample_sum(samples, "torchd_batch_size_bucket", model_name="mbatch", le="4.0") == 1
    # One request after another: batches of one.
    assert sample_sum(samples, "torchd_batch_size_bucket", model_name="ma", le="1.0") >= 5


def test_worker_restarts_are_counted(measured):
    d = measured.daemon
    [worker] = d.workers("mb")
    assert sample_sum(scrape(d), "torchd_worker_restarts_total", model_name="mb") == 0
    os.kill(worker["pid"], signal.SIGKILL)
    wait_until(lambda: [(w["status"], w["pid"] != worker["pid"]) for w in d.workers("mb")]
               == [("READY", True)], timeout=60, what="mb's worker replaced")
    assert sample_sum(scrape(d), "torchd_worker_restarts_total", model_name="mb") == 1


def test_worker_rss(measured):
    d = measured.daemon
    [worker] = d.workers("ma")
    rss = wait_until(lambda: sample_sum(scrape(d), "torchd_worker_rss_bytes", model_name="ma",
                                        worker_id=worker["id"]), timeout=10, what="RSS")
    assert 1 << 20 < rss < 4 << 30


def test_an_unregistered_version_leaves_no_series(measured):
    d = measured.daemon
    assert d.register("noop.mar", model_name="gone", initial_workers=1).status_code == 200
    assert d.infer("POST", "/predictions/gone", data=b"x").status_code == 200
    assert d.infer("POST", "/predictions/gone/1.0", data=b"x").status_code == 200
    families = {line.split("{")[0] for line in series_lines(d, "gone")}
    assert {"ts_inference_requests_total", "ts_inference_latency_microseconds",
            "ts_queue_latency_microseconds", "torchd_request_latency_seconds_count",
            "torchd_batch_size_count", "torchd_queue_depth", "torchd_workers"} <= families
    assert d.unregister("gone").status_code == 200
    assert series_lines(d, "gone") == []


def series_lines(d: Daemon, model: str) -> list[str]:
    """The lines of /metrics labelled with ``model``."""
    response = requests.get(d.url("metrics", "/metrics"), timeout=10)
    assert response.status_code == 200, response.text
    return [line for line in response.text.splitlines() if f'model_name="{model}"' in line]


def test_name_filter_shows_only_the_families_asked_for(measured):
    # TorchServe's metrics API: GET /metrics?name[]=<family>&name[]=... (its docs' curl example)
    d = measured.daemon
    assert d.infer("POST", "/predictions/ma", data=b"x").status_code == 200
    asked = ["ts_inference_latency_microseconds", "ts_queue_latency_microseconds",
             "torchd_batch_size", "torchd_worker_restarts_total"]   # a family, or a sample
    response = requests.get(d.url("metrics", "/metrics"), params={"name[]": asked}, timeout=10)
    assert response.status_code == 200, response.text
    families = {f.name for f in text_string_to_metric_families(response.text)
                if not f.name.endswith("_created")}   # the histogram's own, as unfiltered
    assert families == {"ts_inference_latency_microseconds", "ts_queue_latency_microseconds",
                        "torchd_batch_size", "torchd_worker_restarts"}
    everything = requests.get(d.url("metrics", "/metrics"), params={"other": "x"}, timeout=10)
    assert len({f.name for f in text_string_to_metric_families(everything.text)}) > 10


def test_disable_system_metrics_leaves_them_out(measured):
    families = {f.name for f in text_string_to_metric_families(
        requests.get(measured.daemon.url("metrics", "/metrics"), timeout=10).text)}
    assert "Requests2XX" in families
    assert not families & {*HOST_METRICS, "GPUUtilization", "GPUMemoryUsed"}
