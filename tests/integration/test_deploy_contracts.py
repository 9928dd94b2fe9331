"""deploy/ against torchd itself: the Deployment's and the KServe runtime's arguments parse with
torchd's own CLI and config loader into the settings the manifests rely on; every probe path is
a route the running daemon answers (without a token, as a kubelet asks); every metric an
autoscaler names is one a live /metrics exports, as a gauge; the grace period covers
shutdown_delay and the drain; and the HPA's formula on the live gauge asks for more replicas
under load and the minimum at rest."""
from __future__ import annotations

import math
import re
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from daemon.config.settings import Config, load_config
from daemon.http import inference
from daemon.ops.cli import parse_args
from daemon.ops.options import argv_options
from daemon.ops.listeners import GRACEFUL_HTTP
from tests.support.manifests import config_properties, container, one, rendered, torchd_args
from tests.support.ops import sample_sum, scrape
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

# What KServe's documentation puts in config/config.properties for its TorchServe runtime
# (interface facts: the keys and the ports it uses), so a TorchServe storageUri works as it is.
KSERVE_TORCHSERVE_PROPERTIES = """\
inference_address=http://0.0.0.0:8085
management_address=http://0.0.0.0:8085
metrics_address=http://0.0.0.0:8082
grpc_inference_port=7070
grpc_management_port=7071
enable_metrics_api=true
metrics_format=prometheus
number_of_netty_threads=4
job_queue_size=10
enable_envvars_config=true
install_py_dep_per_model=true
model_store=/mnt/models/model-store
model_snapshot={"name":"startup.cfg","modelCount":1,"models":{"mnist":{"1.0":{"defaultVersion":true,"marName":"mnist.mar","minWorkers":1,"maxWorkers":5,"batchSize":1,"maxBatchDelay":10,"responseTimeout":120}}}}
"""


def parsed(spec_container: dict[str, Any], properties: str, tmp_path: Path) -> Config:
    """The container's args through torchd's CLI parser and config loader, its config file
    (named inside the pod) replaced by a local copy of ``properties``."""
    local = tmp_path / "config.properties"
    local.write_text(properties)
    command, args, _ = parse_args(torchd_args(spec_container, local))
    assert command == "serve"
    return load_config(argv_options(args), {}, tmp_path)


def base_pod() -> tuple[dict[str, Any], str]:
    docs = rendered("kubernetes/base")
    return one(docs, "Deployment")["spec"]["template"]["spec"], config_properties(docs)


def mounts(spec_container: dict[str, Any]) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in spec_container["volumeMounts"]}


def test_deployment_args_and_config_parse_into_what_the_pod_relies_on(tmp_path) -> None:
    pod, properties = base_pod()
    c = container(pod)
    config = parsed(c, properties, tmp_path)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert (config.inference_address.host, config.inference_address.port) == (
        "0.0.0.0", ports["inference"])
    assert (config.metrics_address.host, config.metrics_address.port) == (
        "0.0.0.0", ports["metrics"])
    assert config.management_address.is_loopback
    assert config.ncs and not config.model_api_enabled and config.token_auth_enabled
    assert config.default_workers_per_model is None      # workers follow the CPU limit
    assert config.startup_models and not config.model_settings("mlp").get("minWorkers")
    volumes = mounts(c)
    assert config.key_file.parent == Path(volumes["keys"])
    assert config.log_location == Path(volumes["logs"])
    assert config.model_store.is_relative_to(volumes["model-store"])
    assert config.shutdown_delay > 0


def test_grace_period_covers_shutdown_delay_and_the_drain(tmp_path) -> None:
    pod, properties = base_pod()
    config = parsed(container(pod), properties, tmp_path)
    drain = GRACEFUL_HTTP + max(config.default_response_timeout,
                                config.unregister_model_timeout)
    assert pod["terminationGracePeriodSeconds"] > config.shutdown_delay + drain


def test_kserve_runtime_args_parse_and_win_over_a_torchserve_config(tmp_path) -> None:
    runtime = one(rendered("kserve"), "ClusterServingRuntime")["spec"]
    c = container(runtime)
    config = parsed(c, KSERVE_TORCHSERVE_PROPERTIES, tmp_path)
    assert (config.inference_address.host, config.inference_address.port) == ("0.0.0.0", 8080)
    assert c["ports"][0]["containerPort"] == 8080
    assert config.management_address.is_loopback and config.metrics_address.port == 8082
    assert config.model_store == Path("/mnt/models/model-store")
    assert config.config_file == tmp_path / "config.properties"
    assert config.job_queue_size == 10                   # the file's own settings still count
    assert not config.token_auth_enabled and not config.model_api_enabled and config.ncs
    assert config.shutdown_delay == 5.0
    # the models are the file's model_snapshot, as KServe's TorchServe configs have them
    assert not config.load_all_models and list(config.model_snapshot["models"]) == ["mnist"]
    grpc = config.grpc_listeners["inference"]
    assert (grpc.host, grpc.port) == ("0.0.0.0", 7070)
    assert config.grpc_listeners["management"].is_loopback
    writable = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/tmp", str(config.log_location)} <= writable


def probe_paths() -> set[str]:
    pod, _ = base_pod()
    runtime = container(one(rendered("kserve"), "ClusterServingRuntime")["spec"])
    paths = set()
    for c in (container(pod), runtime):
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe in c:
                paths.add(c[probe]["httpGet"]["path"])
    return paths


def test_every_probe_is_a_route_the_daemon_answers_without_a_token(make_daemon) -> None:
    paths = probe_paths()
    assert paths == {"/v2/health/ready", "/v2/health/live"}
    assert paths <= {route.path for route in inference.ROUTES}
    # token auth on, as in the pod (where the listener binds 0.0.0.0)
    d = make_daemon({"disable_token_authorization": "false", "default_workers_per_model": 1},
                    start=False)
    d.start("--models", "probed=noop.mar")
    assert d.infer("GET", "/ping").status_code == 401
    for path in sorted(paths):
        response = d.infer("GET", path)
        assert response.status_code == 200, (path, response.text)


def autoscaler_queries() -> list[str]:
    hpa_docs = rendered("kubernetes/autoscaling/hpa")
    hpa = one(hpa_docs, "HorizontalPodAutoscaler")["spec"]
    adapter = next(doc for doc in hpa_docs if doc["metadata"]["name"] == "prometheus-adapter")
    [rule] = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    keda = one(rendered("kubernetes/autoscaling/keda"), "ScaledObject")["spec"]
    return [hpa["metrics"][0]["pods"]["metric"]["name"], rule["seriesQuery"],
            rule["name"]["as"], keda["triggers"][0]["metadata"]["query"]]


def named_metrics(queries: list[str]) -> set[str]:
    return {name for query in queries for name in re.findall(r"\b(?:torchd|ts)_[a-z_]+", query)}


def test_every_metric_an_autoscaler_names_is_a_gauge_torchd_exports(make_daemon) -> None:
    names = named_metrics(autoscaler_queries())
    assert names == {"torchd_inflight_requests"}
    d = make_daemon()
    assert d.register("noop.mar", model_name="scaled", initial_workers=1).status_code == 200
    assert d.infer("POST", "/predictions/scaled", data=b"x").status_code == 200
    text = requests.get(d.url("metrics", "/metrics"), timeout=10).text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    for name in names:
        assert families[name].type == "gauge", name       # never a cumulative counter
        labels = [sample.labels for sample in families[name].samples]
        assert {"model_name": "scaled", "model_version": "1.0"} in labels


def hpa_desired(replicas: int, per_pod: list[float], target: float, low: int, high: int) -> int:
    """Kubernetes' HPA rule for an AverageValue Pods metric, bounded by min and max."""
    mean = sum(per_pod) / len(per_pod)
    return max(low, min(high, math.ceil(replicas * mean / target)))


def test_hpa_formula_on_the_live_gauge_scales_up_under_load_and_down_at_rest(
        make_daemon) -> None:
    hpa = one(rendered("kubernetes/autoscaling/hpa"), "HorizontalPodAutoscaler")["spec"]
    target = float(hpa["metrics"][0]["pods"]["target"]["averageValue"])
    low, high = hpa["minReplicas"], hpa["maxReplicas"]
    d = make_daemon()
    assert d.register("sleep.mar", model_name="loaded", initial_workers=1).status_code == 200
    clients = int(target) * 2 + 1       # more than two pods' worth in flight on this one

    def inflight() -> float:
        return sample_sum(scrape(d), "torchd_inflight_requests", model_name="loaded")

    def call() -> None:
        requests.post(d.url("inference", "/predictions/loaded"), json={"sleep": 0.5},
                      timeout=60)
    threads = [threading.Thread(target=call) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        busy = wait_until(lambda: (value := inflight()) >= target * 2 and value, 10)
        assert hpa_desired(low, [busy] * low, target, low, high) > low
    finally:
        for thread in threads:
            thread.join(60)
    rest = inflight()
    assert rest == 0 and hpa_desired(3, [rest] * 3, target, low, high) == low
