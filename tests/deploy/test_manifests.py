"""deploy/ without a cluster: every overlay, rendered by `kubectl kustomize`, is piped into
`kubernetes-validate --strict` for an older and the newest Kubernetes it knows; the custom
resources it has no schema for (KEDA's ScaledObject, KServe's ClusterServingRuntime and
InferenceService) are checked against the fields their documentation defines, with the core
objects inside them (containers, volumes, HPA behavior) validated as the core objects they are.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.manifests import (
    OVERLAYS,
    container,
    kustomize,
    load_file,
    one,
    rendered,
)

pytestmark = pytest.mark.timeout(120)
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")   # the oldest still common, the newest bundled
CUSTOM_KINDS = {"ScaledObject", "ClusterServingRuntime", "InferenceService"}


def validator() -> str:
    beside = Path(sys.executable).with_name("kubernetes-validate")
    found = str(beside) if beside.exists() else shutil.which("kubernetes-validate")
    if found is None:
        pytest.skip("kubernetes-validate is not installed (pip install '.[test]')")
    return found


def validate(stream: str, version: str) -> subprocess.CompletedProcess:
    """`... | kubernetes-validate --strict -k <version> -`"""
    return subprocess.run([validator(), "--strict", "-k", version, "-"], input=stream,
                          capture_output=True, text=True, timeout=120)


def validate_objects(objects: list[dict[str, Any]], version: str = "1.37.0") -> None:
    done = validate(yaml.safe_dump_all(objects), version)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_validates_strictly(overlay: str, version: str) -> None:
    stream = kustomize(overlay)
    docs = [doc for doc in yaml.safe_load_all(stream) if doc]
    done = validate(stream, version)
    assert done.returncode == 0, done.stdout + done.stderr
    short = version.rsplit(".", 1)[0]
    for doc in docs:
        resource = f"{doc['kind'].lower()}/{doc['metadata']['name']}"
        if doc["kind"] in CUSTOM_KINDS:
            assert f"Couldn't find schema for kind {doc['kind']}" in done.stdout + done.stderr
        else:
            assert f"passed for resource {resource} against version {short}" in done.stdout


def test_the_validator_rejects_a_misspelt_field() -> None:
    bad = "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {prots: []}\n"
    done = validate(bad, KUBERNETES_VERSIONS[0])
    assert done.returncode != 0 and "'prots' was unexpected" in done.stdout + done.stderr


# ---- the base ------------------------------------------------------------------------------

def test_the_config_map_is_hash_suffixed_and_mounted_under_that_name() -> None:
    docs = rendered("kubernetes/base")
    name = one(docs, "ConfigMap")["metadata"]["name"]
    assert re.fullmatch(r"torchd-config-[a-z0-9]{10}", name), name
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "configMap": {"name": name}} in volumes


def test_probes_security_and_writable_dirs() -> None:
    pod = one(rendered("kubernetes/base"), "Deployment")["spec"]["template"]["spec"]
    c = container(pod)
    assert c["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "inference"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "inference"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "inference"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"] == {"allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts["/tmp"] in empty_dirs and mounts["/var/log/torchd"] in empty_dirs
    assert all(m.get("readOnly") for m in c["volumeMounts"] if m["name"] not in empty_dirs)
    keys = next(v for v in pod["volumes"] if v["name"] == "keys")
    assert keys["secret"]["defaultMode"] == 0o440


def test_requests_equal_whole_cpu_limits() -> None:
    """The worker count follows the CPU limit (a cgroup quota, rounded up): a whole number,
    equal to the request, so the pod gets what its workers are sized for."""
    c = container(one(rendered("kubernetes/base"), "Deployment")["spec"]["template"]["spec"])
    assert c["resources"]["requests"] == c["resources"]["limits"]
    assert re.fullmatch(r"[1-9][0-9]*", c["resources"]["limits"]["cpu"])


def test_service_and_disruption_budget_select_the_pods() -> None:
    docs = rendered("kubernetes/base")
    deployment = one(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service, budget = one(docs, "Service"), one(docs, "PodDisruptionBudget")
    assert service["spec"]["selector"] == labels
    assert budget["spec"]["selector"]["matchLabels"] == labels
    ports = {p["name"]: p["containerPort"] for p in container(
        deployment["spec"]["template"]["spec"])["ports"]}
    assert {(p["port"], ports[p["targetPort"]]) for p in service["spec"]["ports"]} == {
        (8080, 8080), (8082, 8082)}
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


# ---- autoscaling ---------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", ["kubernetes/autoscaling/hpa",
                                     "kubernetes/autoscaling/keda"])
def test_the_autoscaler_owns_the_replica_count(overlay: str) -> None:
    assert "replicas" not in one(rendered(overlay), "Deployment")["spec"]


def test_hpa_scales_the_deployment_on_a_per_pod_metric() -> None:
    docs = rendered("kubernetes/autoscaling/hpa")
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": one(docs, "Deployment")["metadata"]["name"]}
    [metric] = hpa["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    rules = yaml.safe_load(next(doc for doc in docs if doc["kind"] == "ConfigMap"
                                and doc["metadata"]["name"] == "prometheus-adapter")
                           ["data"]["config.yaml"])["rules"]
    [rule] = rules
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    assert "rate(" not in rule["metricsQuery"] and "increase(" not in rule["metricsQuery"]


SCALED_OBJECT_SPEC = {"scaleTargetRef", "pollingInterval", "cooldownPeriod",
                      "initialCooldownPeriod", "idleReplicaCount", "minReplicaCount",
                      "maxReplicaCount", "fallback", "advanced", "triggers"}
SCALE_TARGET = {"apiVersion", "kind", "name", "envSourceContainerName"}
TRIGGER = {"type", "name", "metadata", "metricType", "useCachedMetrics", "authenticationRef"}
PROMETHEUS_METADATA = {"serverAddress", "query", "threshold", "activationThreshold",
                       "namespace", "customHeaders", "ignoreNullValues", "queryParameters",
                       "unsafeSsl", "authModes"}


def test_keda_scaled_object_has_the_documented_shape() -> None:
    docs = rendered("kubernetes/autoscaling/keda")
    scaled = one(docs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) <= SCALED_OBJECT_SPEC and set(spec["scaleTargetRef"]) <= SCALE_TARGET
    assert spec["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    [trigger] = spec["triggers"]
    assert set(trigger) <= TRIGGER and trigger["type"] == "prometheus"
    assert trigger["metricType"] == "AverageValue"
    metadata = trigger["metadata"]
    assert set(metadata) <= PROMETHEUS_METADATA
    assert {"serverAddress", "query", "threshold"} <= set(metadata)
    assert all(isinstance(value, str) for value in metadata.values())   # KEDA wants strings
    float(metadata["threshold"])
    assert "rate(" not in metadata["query"] and "increase(" not in metadata["query"]
    # the HPA behavior KEDA hands on is Kubernetes' own type: validate it as one
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    validate_objects([{"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                       "metadata": {"name": "behavior"},
                       "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "torchd"},
                                "maxReplicas": 2, "behavior": behavior}}])


# ---- KServe --------------------------------------------------------------------------------

RUNTIME_SPEC = {"affinity", "annotations", "builtInAdapter", "containers", "disabled",
                "grpcDataEndpoint", "grpcEndpoint", "httpDataEndpoint", "imagePullSecrets",
                "labels", "multiModel", "nodeSelector", "protocolVersions", "replicas",
                "storageHelper", "supportedModelFormats", "tolerations", "volumes", "hostIPC",
                "workerSpec"}
MODEL_FORMAT = {"name", "version", "autoSelect", "priority"}
PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}
MODEL_SPEC_EXTRA = {"modelFormat", "runtime", "protocolVersion", "storageUri", "storage"}


def test_cluster_serving_runtime_has_the_documented_shape() -> None:
    runtime = one(rendered("kserve"), "ClusterServingRuntime")
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    spec = runtime["spec"]
    assert set(spec) <= RUNTIME_SPEC
    assert spec["protocolVersions"] == ["v1", "v2", "grpc-v2"]
    assert set(spec["protocolVersions"]) <= PROTOCOLS
    [model_format] = spec["supportedModelFormats"]
    assert set(model_format) <= MODEL_FORMAT and model_format["name"] == "pytorch"
    c = container(spec)
    assert c["name"] == "kserve-container"   # the name KServe merges the predictor into
    assert c["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert spec["annotations"]["prometheus.kserve.io/port"] == "8082"
    validate_objects([{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "runtime"},
                       "spec": {"containers": spec["containers"],
                                "volumes": spec["volumes"]}}])


def test_example_inference_service_names_the_runtime_and_what_it_serves() -> None:
    service = load_file("kserve/inferenceservice.yaml")
    runtime = one(rendered("kserve"), "ClusterServingRuntime")
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert service["kind"] == "InferenceService"
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert re.match(r"(pvc|gs|s3|https?|oci)://", model["storageUri"])
    container_fields = {k: v for k, v in model.items() if k not in MODEL_SPEC_EXTRA}
    validate_objects([{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"},
                       "spec": {"containers": [{"name": "kserve-container", "image": "x",
                                                **container_fields}]}}])
