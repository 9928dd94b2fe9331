"""Metrics recorded by handlers (``context.metrics.add_counter/add_time/...``, TorchServe's
``HandlerTime`` and ``PredictionTime``), shown on /metrics as TorchServe shows them.

The worker sends what a batch recorded with that batch's RESULT frame (no frame of their own);
each record is protocol.messages.metric's map (name, unit, type, value, dimensions) with
TorchServe's ``ModelName`` and ``Level`` among the dimensions; ``Hostname`` is added here, as
TorchServe's frontend adds it. Counters render as TorchServe renders them (no ``_total``
suffix, see daemon/metrics/counters.py), gauges and histograms through prometheus_client.

With a metrics configuration (``metrics_config``, daemon/metrics/spec.py) a metric it declares is
shown with the declared type, unit and dimension names (the record's dimension values taken in
order, then the host's name), and one it does not declare only with ``model_metrics_auto_detect``;
without one, every metric is shown as the handler recorded it. In ``metrics_mode`` log or legacy,
each record shown is also a line of the metrics log (daemon/metrics/metrics_log.py).

A handler controls names and dimension values, so it could create series without end: each
model may own ``max_series`` of them (metric name + label values); past that, new series are
dropped with one warning per model, while the series it has keep updating. A model's series
leave with its last version.
"""
from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram

from daemon.metrics.counters import Names, TorchServeCounter, exposition, wanted
from daemon.metrics.configured import DEFAULT_UNITS
from daemon.metrics.metrics_log import MetricsLog
from daemon.metrics.spec import DEFAULT_MODEL_METRICS, HOSTNAME, MetricSpec

logger = logging.getLogger(__name__)

MAX_SERIES_PER_MODEL = 100
MAX_WARNINGS = 1000   # distinct warnings remembered (each is logged once), over all models
MAX_UNAPPLIED = 1000  # records that wait for a scrape before they are applied anyway
KINDS = ("counter", "gauge", "histogram")
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Names of the daemon's own series: a handler metric may not take them (a second family of one
# name would make the whole exposition unreadable).
# (TorchServe's own handler timings, ts_handler_preprocess and the like, are handler metrics.)
RESERVED_PREFIXES = ("torchd_", "ts_inference_", "ts_queue_")
RESERVED_NAMES = frozenset(DEFAULT_UNITS)   # every TorchServe-named series of the daemon

SeriesKey = tuple[str, tuple[str, ...]]   # metric name, label values
# what a record becomes: name, kind, unit, label names, label values
Shape = tuple[str, str, str, tuple[str, ...], tuple[str, ...]]
# TorchServe's own per-model timings: never crowded out by a handler's flood of series (they
# do not count towards the cap as long as they have TorchServe's labels and this model's name).
# (TorchServe's default configuration declares them: daemon/metrics/spec.py)
BUILTIN_NAMES = frozenset(metric.name for metric in DEFAULT_MODEL_METRICS)
BUILTIN_LABELS = DEFAULT_MODEL_METRICS[0].dimensions


class _Family:
    """One metric name: its kind, label names, the prometheus object and its series."""

    def __init__(self, name: str, kind: str, unit: str, labels: tuple[str, ...],
                 registry: CollectorRegistry) -> None:
        self.name, self.kind, self.labels = name, kind, labels
        # TorchServe's HELP line (people read it; dashboards do not)
        help_text = f"Torchserve prometheus {kind} metric with unit: {unit}"
        if kind == "counter":
            self.metric: Any = TorchServeCounter(name, help_text, labels)
        elif kind == "gauge":
            self.metric = Gauge(name, help_text, labels, registry=registry)
        else:
            self.metric = Histogram(name, help_text, labels, registry=registry)
        self.series: set[tuple[str, ...]] = set()

    def update_function(self, values: tuple[str, ...]) -> Callable[[float], None]:
        if self.kind == "counter":
            return lambda amount: self.metric.inc_key(values, amount) if amount >= 0 else None
        child = self.metric.labels(*values)
        return child.set if self.kind == "gauge" else child.observe

    def remove(self, values: tuple[str, ...]) -> None:
        self.series.discard(values)
        try:
            if self.kind == "counter":
                self.metric.remove(values)
            else:
                self.metric.remove(*values)
        except KeyError:   # older prometheus_client releases, for a child never made
            pass


class HandlerMetrics:
    """Every model's handler metrics; ``record`` runs on the event loop, ``render`` on scrape."""

    def __init__(self, hostname: str, max_series: int = MAX_SERIES_PER_MODEL,
                 declared: dict[str, MetricSpec] | None = None, auto_detect: bool = True,
                 log: MetricsLog | None = None) -> None:
        self.hostname = hostname
        self.max_series = max_series
        self.declared = declared or {}
        self.auto_detect = auto_detect
        self.log = log
        self.registry = CollectorRegistry()
        self._families: dict[str, _Family] = {}
        self._owned: dict[str, set[SeriesKey]] = {}      # model -> the series it created
        self._counted: dict[str, int] = {}               # model -> its series under the cap
        self._updates: dict[tuple[str, str, str, tuple], Callable[[float], None]] = {}
        self._warned: set[tuple[str, str]] = set()
        self._unapplied: list[tuple[str, list]] = []
        self._waiting = 0                                # records in _unapplied
        self._lock = threading.Lock()

    def record(self, model: str, records: Any) -> None:
        """Take one RESULT's records of ``model``. They are applied when /metrics is read (or
        once ``MAX_UNAPPLIED`` records wait): every batch brings at least PredictionTime, and
        the event loop that reads results is the one every request's work is done on."""
        if isinstance(records, list):
            if self.log is not None:
                self._log(model, records)
            self._unapplied.append((model, records))
            # counted in records, not results: a handler recording many per batch must not
            # make one apply() long enough to stall the event loop
            self._waiting += len(records)
            if self._waiting >= MAX_UNAPPLIED:
                self.apply()

    def apply(self) -> None:
        """Apply the records taken since the last call, in order; malformed ones are skipped
        (the worker runs the handler's code, so nothing it sends is trusted)."""
        with self._lock:
            unapplied, self._unapplied, self._waiting = self._unapplied, [], 0
            for model, records in unapplied:
                for record in records:
                    self._apply_one(model, record)

    def _apply_one(self, model: str, record: Any) -> None:
        try:
            self._apply(model, record)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            self._warn_once(model, "bad record", "model %s: a malformed handler metric record "
                            "was skipped (%s): %s", exc, str(record)[:200])

    def _apply(self, model: str, record: dict) -> None:
        name, kind, value = record["name"], record["type"], record["value"]
        dims = record.get("dimensions") or []
        number = float(value)   # before any series is made for it
        cache_key = (model, name, kind, tuple(tuple(d) for d in dims))
        update = self._updates.get(cache_key)
        if update is None:
            shape = self._shape(model, record)
            update = _ignore if shape is None else self._new_series(model, *shape)
            if update is None:
                return
            self._updates[cache_key] = update
        if math.isfinite(number):
            update(number)

    def _shape(self, model: str, record: dict) -> Shape | None:
        """What the record is shown as: as the configuration declares it, as the handler
        recorded it (no configuration, or auto-detection), or None (not shown)."""
        name, dims = record["name"], record.get("dimensions") or []
        spec = self.declared.get(name) if isinstance(name, str) else None
        if spec is None:
            if not self.auto_detect:
                return None
            labels, values = self._labels(dims)
            return name, record["type"], str(record.get("unit", "")), labels, values
        values = tuple(str(v) for _, v in dims) + (self.hostname,)
        if len(values) != len(spec.dimensions):
            self._warn_once(model, f"dims {name}", "model %s: handler metric %r dropped: it "
                            "has %d dimension values, the metrics configuration declares %s",
                            name, len(values) - 1, list(spec.dimensions[:-1]))
            return None
        return spec.name, spec.kind, spec.unit, spec.dimensions, values

    def _log(self, model: str, records: list) -> None:
        assert self.log is not None
        for record in records:
            try:
                shape = self._shape(model, record)
                if shape is None:
                    continue
                name, _, unit, labels, values = shape
                pairs = [(k, v) for k, v in zip(labels, values) if k != HOSTNAME]
                self.log.model(name, unit, pairs, self.hostname, float(record["value"]),
                               record.get("request_id"))
            except (TypeError, ValueError, KeyError, AttributeError):
                continue   # malformed: _apply_one says so, once

    def _new_series(self, model: str, name: Any, kind: Any, unit: str,
                    labels: tuple[str, ...],
                    values: tuple[str, ...]) -> Callable[[float], None] | None:
        problem = _check(name, kind, labels)
        family = self._families.get(name) if problem is None else None
        if problem is None and family is not None and (family.kind, family.labels) != (
                kind, labels):
            problem = (f"it was first recorded as a {family.kind} with dimensions "
                       f"{list(family.labels)}")
        if problem is not None:
            self._warn_once(model, f"name {str(name)[:100]}",
                            "model %s: handler metric %r dropped: %s",
                            str(name)[:100], problem)
            return None
        owned = self._owned.setdefault(model, set())
        if (name, values) not in owned:
            counted = not _builtin(model, name, labels, values)
            if counted and self._counted.get(model, 0) >= self.max_series:
                self._warn_once(model, "cap", "model %s: its handler metrics reached %d series; "
                                "new series are dropped", self.max_series)
                return None
            owned.add((name, values))
            self._counted[model] = self._counted.get(model, 0) + counted
        if family is None:
            family = self._families[name] = _Family(name, kind, unit, labels, self.registry)
        family.series.add(values)
        return family.update_function(values)

    def _labels(self, dims: list) -> tuple[tuple[str, ...], tuple[str, ...]]:
        pairs = [(str(n), str(v)) for n, v in dims]
        if not any(n == HOSTNAME for n, _ in pairs):
            pairs.append((HOSTNAME, self.hostname))
        return tuple(n for n, _ in pairs), tuple(v for _, v in pairs)

    def _warn_once(self, model: str, what: str, message: str, *args: Any) -> None:
        if (model, what) not in self._warned and len(self._warned) < MAX_WARNINGS:
            self._warned.add((model, what))
            logger.warning(message, model, *args)

    def forget(self, model: str) -> None:
        """Drop every series ``model`` created (its last version was unregistered)."""
        self.apply()
        with self._lock:
            self._counted.pop(model, None)
            for name, values in self._owned.pop(model, set()):
                family = self._families.get(name)
                if family is None:
                    continue
                family.remove(values)
                if not family.series:
                    self._drop_family(family)
            self._updates = {k: f for k, f in self._updates.items() if k[0] != model}
            self._warned = {w for w in self._warned if w[0] != model}

    def _drop_family(self, family: _Family) -> None:
        del self._families[family.name]
        if family.kind != "counter":
            self.registry.unregister(family.metric)
        # another model's cached updates may point at the family: they must make a new one
        self._updates = {k: f for k, f in self._updates.items() if k[1] != family.name}

    def series_count(self, model: str) -> int:
        """The model's series that count towards the cap."""
        self.apply()
        with self._lock:
            return self._counted.get(model, 0)

    def render(self, names: Names = None) -> bytes:
        """The handlers' families (only those ``names`` asks for, when given)."""
        self.apply()
        with self._lock:
            counters = [f.metric for f in self._families.values() if f.kind == "counter"]
        text = "".join(counter.render() for counter in counters
                       if wanted(counter.name, names)).encode("utf-8")
        return text + exposition(self.registry, names)


def _ignore(value: float) -> None:
    """The update of a record that is not shown (cached, so it costs one lookup)."""


def _builtin(model: str, name: str, labels: tuple[str, ...], values: tuple[str, ...]) -> bool:
    return name in BUILTIN_NAMES and labels == BUILTIN_LABELS and values[0] == model


def _check(name: Any, kind: Any, labels: tuple[str, ...]) -> str | None:
    """Why a new series cannot be shown, or None."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return "not a valid Prometheus metric name"
    if name.startswith(RESERVED_PREFIXES) or name in RESERVED_NAMES:
        return "the name is one of torchd's own metrics"
    if kind not in KINDS:
        return f"unknown metric type {kind!r}"
    if len(set(labels)) != len(labels):
        return "a dimension is given twice"
    bad = [label for label in labels if not _LABEL.fullmatch(label) or label.startswith("__")
           or (kind == "histogram" and label == "le")]
    if bad:
        return f"dimension name(s) {bad} are not valid Prometheus label names"
    return None
