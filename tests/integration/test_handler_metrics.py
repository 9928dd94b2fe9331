"""Handler metrics through the real daemon: a handler's counter, TorchServe's HandlerTime and
PredictionTime on /metrics after one request, the per-model series cap, the series leaving
with the model; a metrics_config and metrics_mode=log changing what /metrics and the metric logs
show as TorchServe 0.12's would."""
from __future__ import annotations

import re
import socket
from pathlib import Path

import psutil
import pytest
import requests

from daemon.metrics.handlers import MAX_SERIES_PER_MODEL
from daemon.metrics.host import HOST_METRICS
from tests.support.archives import build_archive
from tests.support.daemon import running_daemon
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(180)
HOST = socket.gethostname()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    store = tmp_path_factory.mktemp("metered-archives")
    build_archive("probe", store, name="metered")
    build_archive("probe", store, name="flood")
    with running_daemon(store, tmp_path_factory.mktemp("metered")) as d:
        for url in ("metered.mar", "flood.mar"):
            assert d.register(url, initial_workers=1).status_code == 200
        yield d


def scrape(daemon) -> list[str]:
    response = requests.get(daemon.url("metrics", "/metrics"), timeout=30)
    assert response.status_code == 200
    return response.text.splitlines()


def samples(lines: list[str], name: str, model: str) -> list[str]:
    return [line for line in lines if line.startswith(name + "{")
            and f'ModelName="{model}"' in line]


def value(line: str) -> float:
    return float(line.rsplit(" ", 1)[1])


def test_custom_counter_and_torchserve_timings_after_one_request(daemon) -> None:
    response = daemon.infer("POST", "/predictions/metered", json={"color": "red"})
    assert response.status_code == 200, response.text
    lines = scrape(daemon)
    assert samples(lines, "ProbeRequests", "metered") == [
        f'ProbeRequests{{Color="red",ModelName="metered",Level="Model",Hostname="{HOST}"}} 1.0']
    assert "# TYPE ProbeRequests counter" in lines
    for timing in ("HandlerTime", "PredictionTime"):
        [line] = samples(lines, timing, "metered")
        assert line.startswith(f'{timing}{{Hostname="{HOST}",Level="Model",ModelName="metered"}}')
        assert 0 <= value(line) < 10_000, line   # milliseconds
        assert f"# TYPE {timing} gauge" in lines
    daemon.infer("POST", "/predictions/metered", json={"color": "red"})
    [counter] = samples(scrape(daemon), "ProbeRequests", "metered")
    assert value(counter) == 2.0


def test_what_initialize_records_is_shown_once_loaded(daemon) -> None:
    """TorchServe's custom metrics example counts InitializeCallCount in initialize: shown once
    the worker loaded, at the model's level (torchd dropped a BaseHandler's, and labelled
    another's Level="Error" with the first batch)."""
    assert samples(scrape(daemon), "InitializeCallCount", "metered") == [
        f'InitializeCallCount{{ModelName="metered",Level="Model",Hostname="{HOST}"}} 1.0']


def test_torchserve_default_declarations_are_in_the_handlers_cache(daemon) -> None:
    """Without a metrics_config TorchServe's default one declares HandlerTime and
    PredictionTime: a handler's get_metric finds them (a KeyError answered 503 before)."""
    response = daemon.infer("POST", "/predictions/metered",
                            json={"color": "red", "handler_time": 5})
    assert response.status_code == 200, response.text


def test_host_system_metrics_as_torchserve_names_them(daemon) -> None:
    """TorchServe's CPU, memory and disk gauges, labelled Level="Host" and Hostname, read at
    the scrape."""
    lines = scrape(daemon)
    read = {}
    for name in HOST_METRICS:
        [line] = [line for line in lines if line.startswith(name + "{")]
        assert line.startswith(f'{name}{{Hostname="{HOST}",Level="Host"}} ') \
            or line.startswith(f'{name}{{Level="Host",Hostname="{HOST}"}} '), line
        assert f"# TYPE {name} gauge" in lines
        read[name] = value(line)
    memory, disk = psutil.virtual_memory(), psutil.disk_usage("/")
    assert 0 <= read["CPUUtilization"] <= 100
    assert 0 < read["MemoryUsed"] < memory.total / 2**20
    assert 0 < read["MemoryAvailable"] <= memory.total / 2**20
    assert 0 < read["MemoryUtilization"] < 100 and 0 < read["DiskUtilization"] <= 100
    assert read["DiskUsage"] + read["DiskAvailable"] <= disk.total / 2**30 * 1.01


def test_queue_time_and_each_workers_load_time(daemon) -> None:
    assert daemon.infer("POST", "/predictions/metered", json={"color": "red"}).status_code == 200
    lines = scrape(daemon)
    [queue] = [line for line in lines if line.startswith("QueueTime{")]
    assert 0 <= value(queue) < 30_000
    [worker] = daemon.workers("metered")
    name = f'WorkerName="W-{worker["id"]}-metered_1.0"'
    [load] = [line for line in lines if line.startswith("WorkerLoadTime{") and name in line]
    assert 0 < value(load) < 120_000     # ms from its start to READY


def test_series_cap_per_model(daemon) -> None:
    for _ in range(2):
        response = daemon.infer("POST", "/predictions/flood", json={"series": 150})
        assert response.status_code == 200, response.text
    lines = scrape(daemon)
    flood = samples(lines, "ProbeSeries", "flood")
    # InitializeCallCount and ProbeRequests took a series of the cap each; HandlerTime and
    # PredictionTime are not counted
    assert len(flood) == MAX_SERIES_PER_MODEL - 2
    assert all(value(line) == 2.0 for line in flood)   # the kept series still update
    assert len(samples(lines, "HandlerTime", "flood")) == 1
    assert len(samples(lines, "ProbeRequests", "metered")) == 1   # other models unaffected
    warnings = re.findall(r"model flood: its handler metrics reached \d+ series", daemon.log())
    assert warnings == [f"model flood: its handler metrics reached {MAX_SERIES_PER_MODEL} series"]


def test_series_leave_with_the_model(daemon, tmp_path: Path) -> None:
    response = daemon.register("metered.mar", model_name="brief", initial_workers=1)
    assert response.status_code == 200, response.text
    assert daemon.infer("POST", "/predictions/brief", json={"color": "x"}).status_code == 200
    assert samples(scrape(daemon), "ProbeRequests", "brief")
    assert daemon.unregister("brief").status_code == 200
    assert not [line for line in scrape(daemon) if 'ModelName="brief"' in line]
    assert samples(scrape(daemon), "ProbeRequests", "metered")   # the others stay


# a metrics.yaml as TorchServe 0.12's users write one: ProbeRequests declared as a gauge with
# its three dimensions, HandlerTime kept, PredictionTime and the 4XX/5XX counters left out
METRICS_YAML = """\
dimensions:
  - &model_name "ModelName"
  - &level "Level"
ts_metrics:
  counter:
    - name: Requests2XX
      unit: Count
      dimensions: [*level, "Hostname"]
    - name: ts_inference_requests_total
      unit: Count
      dimensions: ["model_name", "model_version", "hostname"]
  gauge:
    - name: CPUUtilization
      unit: Percent
      dimensions: [*level, "Hostname"]
model_metrics:
  gauge:
    - name: ProbeRequests
      unit: Count
      dimensions: ["Color", *model_name, *level]
    - name: HandlerTime
      unit: ms
      dimensions: [*model_name, *level]
    - name: RequestBatchSize
      unit: count
      dimensions: ["ModelName"]
  counter:
    - name: InitializeCallCount
      unit: count
      dimensions: [*model_name, *level]
"""


def test_metrics_config_and_log_mode(tmp_path_factory: pytest.TempPathFactory) -> None:
    store = tmp_path_factory.mktemp("configured-archives")
    build_archive("probe", store, name="configured")
    workdir = tmp_path_factory.mktemp("configured")
    (workdir / "metrics.yaml").write_text(METRICS_YAML)
    settings = {"metrics_config": str(workdir / "metrics.yaml"), "metrics_mode": "log",
                "metrics_location": str(workdir / "metric-logs"), "metric_time_interval": 600}
    with running_daemon(store, workdir, settings) as d:
        # TorchServe's collector writes the host's lines at its start, not an interval later
        # (and nothing has scraped /metrics yet, which writes them too)
        wait_until(lambda: " - CPUUtilization." in _read(workdir / "metric-logs" /
                                                          "ts_metrics.log"),
                   30, 0.1, "a CPUUtilization line in ts_metrics.log at start")
        assert d.register("configured.mar", initial_workers=1).status_code == 200
        response = d.infer("POST", "/predictions/configured", json={"color": "blue"})
        assert response.status_code == 200, response.text
        assert d.infer("POST", "/predictions/nothing").status_code == 404
        lines = scrape(d)
        # declared: a gauge now, with the declared dimensions and their values in order
        assert "# TYPE ProbeRequests gauge" in lines
        assert samples(lines, "ProbeRequests", "configured") == [
            f'ProbeRequests{{Color="blue",Hostname="{HOST}",Level="Model",'
            f'ModelName="configured"}} 1.0']
        assert samples(lines, "HandlerTime", "configured")
        assert samples(lines, "InitializeCallCount", "configured") == [
            f'InitializeCallCount{{ModelName="configured",Level="Model",Hostname="{HOST}"}} 1.0']
        assert not samples(lines, "PredictionTime", "configured")   # not declared
        names = {line.split("{")[0] for line in lines if not line.startswith("#")}
        assert {"Requests2XX", "ts_inference_requests_total"} <= names
        assert not names & {"Requests4XX", "Requests5XX", "ts_queue_latency_microseconds"}
        logs = workdir / "metric-logs"
        model_log = wait_until(lambda: "ProbeRequests" in _read(logs / "model_metrics.log")
                               and _read(logs / "model_metrics.log"), 30, 0.1,
                               "a ProbeRequests line in model_metrics.log")
        [probe] = [line for line in model_log.splitlines() if "ProbeRequests" in line]
        assert re.fullmatch(r"\S+ - ProbeRequests\.Count:1\.0\|#Color:blue,ModelName:configured,"
                            rf"Level:Model\|#hostname:{re.escape(HOST)},requestID:[0-9a-f-]+,"
                            r"timestamp:\d+", probe), probe
        assert "PredictionTime" not in model_log
        frontend = _read(logs / "ts_metrics.log")
        assert re.search(r" - Requests2XX\.Count:1\.0\|#Level:Host\|#hostname:", frontend)
        assert "Requests4XX" not in frontend   # not declared: neither shown nor logged
        # the declared system metric: on /metrics, and in the log
        assert "CPUUtilization" in names and "MemoryUsed" not in names
        cpu = wait_until(lambda: [line for line in _read(logs / "ts_metrics.log").splitlines()
                                  if " - CPUUtilization." in line], 30, 0.1,
                         "a CPUUtilization line in ts_metrics.log")
        assert re.fullmatch(r"\S+ - CPUUtilization\.Percent:[0-9.E]+\|#Level:Host\|#hostname:"
                            rf"{re.escape(HOST)},timestamp:\d+", cpu[0]), cpu[0]
        assert "MemoryUsed" not in _read(logs / "ts_metrics.log")
        # declared, never added by the handler: its get_metric finds it (TorchServe's example)
        batch = d.infer("POST", "/predictions/configured", json={"batch": 3})
        assert batch.status_code == 200, batch.text
        assert samples(scrape(d), "RequestBatchSize", "configured") == [
            f'RequestBatchSize{{Hostname="{HOST}",ModelName="configured"}} 3.0']


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""
