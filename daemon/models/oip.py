"""Open Inference Protocol answers both front ends give (REST /v2 and gRPC's
GRPCInferenceService): a model version's readiness and its metadata document."""
from __future__ import annotations

from typing import Any

from daemon.models.registry import ModelVersion, Registry

SERVER_NAME = "torchd"
EXTENSIONS = ("model_repository_management",)


def model_ready(supervisor: Any, mv: ModelVersion) -> bool:
    """Its minWorkers (at least one) are READY."""
    return supervisor.ready(mv)   # the one rule: daemon/workers/readiness.py


def model_metadata(registry: Registry, mv: ModelVersion) -> dict[str, Any]:
    """Tensors from the model's config when it declares them (under ``v2:`` or at the top of
    model-config.yaml), else empty lists."""
    model = registry.model(mv.name)
    declared = mv.yaml_config.get("v2") or mv.yaml_config
    return {"name": mv.name, "versions": sorted(model.versions), "platform": "pytorch",
            "inputs": _tensors(declared.get("inputs")),
            "outputs": _tensors(declared.get("outputs"))}


def _tensors(value: Any) -> list:
    return [t for t in value if isinstance(t, dict)] if isinstance(value, list) else []
