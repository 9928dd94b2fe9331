"""TorchServe's metrics configuration (``metrics_config``): which metrics exist, of which type,
unit and dimensions.

The YAML's ``ts_metrics`` declares the frontend's metrics, ``model_metrics`` the handlers';
each holds ``counter``, ``gauge`` and ``histogram`` lists of ``{name, unit, dimensions}``
(dimension names, usually through the YAML aliases of its top-level ``dimensions`` list). As
TorchServe 0.12 reads it: a model metric gets the ``Hostname`` dimension after its declared ones
(the daemon adds the value), a declared model metric is shown with its declared type and
dimension names whatever the handler called, and one that is not declared is shown only when
``model_metrics_auto_detect`` is on. Read once, at start; a file that breaks these rules stops the
start with a message naming what is wrong.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

KINDS = ("counter", "gauge", "histogram")
SECTIONS = ("ts_metrics", "model_metrics")
HOSTNAME = "Hostname"
MAX_BYTES = 1 << 20


class MetricsConfigError(ValueError):
    """The metrics configuration cannot be used; the message says why."""


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str                    # counter, gauge, histogram
    unit: str
    dimensions: tuple[str, ...]


@dataclass(frozen=True)
class MetricsSpec:
    frontend: dict[str, MetricSpec]
    model: dict[str, MetricSpec]   # dimensions end with Hostname, as TorchServe adds it


# The handler metrics TorchServe's default configuration (ts/configs/metrics.yaml) declares:
# BaseHandler's HandlerTime and the backend's PredictionTime.
DEFAULT_MODEL_METRICS = tuple(MetricSpec(name, "gauge", "ms", ("ModelName", "Level", HOSTNAME))
                              for name in ("HandlerTime", "PredictionTime"))


def worker_declarations(spec: MetricsSpec | None) -> list[dict[str, Any]]:
    """The metrics a worker's ``context.metrics`` holds before its handler loads, as TorchServe
    fills a worker's cache from the configuration's ``model_metrics`` (its default one without a
    ``metrics_config``): a handler's ``get_metric`` finds each. Without ``Hostname``, which the
    daemon adds to every record."""
    declared = spec.model.values() if spec is not None else DEFAULT_MODEL_METRICS
    return [{"name": m.name, "type": m.kind, "unit": m.unit,
             "dimensions": [d for d in m.dimensions if d != HOSTNAME]} for m in declared]


def load_metrics_spec(path: Path) -> MetricsSpec:
    try:
        if path.stat().st_size > MAX_BYTES:
            raise MetricsConfigError(f"{path} is larger than {MAX_BYTES} bytes")
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise MetricsConfigError(f"cannot read {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise MetricsConfigError(f"{path} is not YAML: {exc}") from exc
    return parse_metrics_spec(document, str(path))


def parse_metrics_spec(document: Any, label: str = "metrics_config") -> MetricsSpec:
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise MetricsConfigError(f"{label}: the document must be a mapping")
    frontend = _section(document, "ts_metrics", label, hostname=False)
    model = _section(document, "model_metrics", label, hostname=True)
    return MetricsSpec(frontend=frontend, model=model)


def _section(document: dict, section: str, label: str, hostname: bool) -> dict[str, MetricSpec]:
    body = document.get(section) or {}
    if not isinstance(body, dict):
        raise MetricsConfigError(f"{label}: {section} must map metric types to lists")
    unknown = sorted(str(kind) for kind in body if kind not in KINDS)
    if unknown:
        raise MetricsConfigError(f"{label}: {section} has unknown metric types {unknown} "
                                 f"(expected {', '.join(KINDS)})")
    found: dict[str, MetricSpec] = {}
    for kind in KINDS:
        entries = body.get(kind) or []
        if not isinstance(entries, list):
            raise MetricsConfigError(f"{label}: {section}.{kind} must be a list")
        for entry in entries:
            spec = _metric(entry, kind, f"{label}: {section}.{kind}", hostname)
            if spec.name in found:
                raise MetricsConfigError(f"{label}: {section} declares {spec.name} twice")
            found[spec.name] = spec
    return found


def _metric(entry: Any, kind: str, where: str, hostname: bool) -> MetricSpec:
    if not isinstance(entry, dict):
        raise MetricsConfigError(f"{where}: each metric must be a mapping")
    name, unit = entry.get("name"), entry.get("unit")
    # TorchServe's own checks: a name and a unit, neither empty
    if not isinstance(name, str) or not name:
        raise MetricsConfigError(f"{where}: metric name cannot be empty ({entry})")
    if not isinstance(unit, str) or not unit:
        raise MetricsConfigError(f"{where}: metric unit cannot be empty ({entry})")
    dimensions = entry.get("dimensions") or []
    if not isinstance(dimensions, list) or not all(isinstance(d, str) and d
                                                   for d in dimensions):
        raise MetricsConfigError(f"{where}: {name}'s dimensions must be a list of names")
    if hostname and HOSTNAME not in dimensions:
        dimensions = [*dimensions, HOSTNAME]
    return MetricSpec(name, kind, unit, tuple(dimensions))
