"""``context.metrics``: the add_time/add_counter/... methods handlers call, recording real values.

Records are kept (bounded) in ``MetricsRecorder.records`` and logged at debug level. Each one
also waits in ``pending`` until the worker sends it to the daemon with the batch's RESULT
(``take_pending``), which shows it on /metrics with TorchServe's labels.
"""
from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from protocol import messages
from worker.runtime.dimension import Dimension
from worker.runtime.metric_type_enum import MetricTypes

logger = logging.getLogger(__name__)

TIME_UNITS = {"ms": "Milliseconds", "s": "Seconds", "us": "Microseconds"}
SIZE_UNITS = {"MB": "Megabytes", "kB": "Kilobytes", "GB": "Gigabytes", "B": "Bytes"}
MAX_RECORDS = 1000
# What one RESULT carries at most; a handler recording more per batch loses the rest (a warning).
MAX_PENDING = 1000


@dataclass
class MetricRecord:
    name: str
    value: float
    unit: str
    metric_type: MetricTypes
    dimensions: list[Dimension] = field(default_factory=list)
    request_id: str | None = None


class Metric:
    """A named metric with fixed unit and dimension names, as returned by ``get_metric``."""

    def __init__(self, recorder: MetricsRecorder, name: str, unit: str,
                 dimension_names: list[str], metric_type: MetricTypes) -> None:
        self._recorder = recorder
        self.name = name
        self.unit = unit
        self.dimension_names = list(dimension_names)
        self.metric_type = metric_type

    def add_or_update(self, value: float, dimension_values: list[str] | None = None,
                      request_id: str | None = None) -> None:
        values = list(dimension_values or [])
        if len(values) != len(self.dimension_names):
            raise ValueError(f"metric {self.name} has dimensions {self.dimension_names}, "
                             f"got {len(values)} values")
        dims = [Dimension(n, v) for n, v in zip(self.dimension_names, values)]
        self._recorder.record(MetricRecord(self.name, value, self.unit, self.metric_type, dims,
                                           request_id))

    def update(self, value: float, dimension_values: list[str] | None = None) -> None:
        self.add_or_update(value, dimension_values)


class MetricsRecorder:
    """Records custom metrics; ``request_id_of(idx)`` maps a batch index to its request id."""

    def __init__(self, model_name: str,
                 request_id_of: Callable[[int], str | None] | None = None) -> None:
        self.model_name = model_name
        self._request_id_of = request_id_of or (lambda idx: None)
        self.records: collections.deque[MetricRecord] = collections.deque(maxlen=MAX_RECORDS)
        self._metrics: dict[tuple[str, MetricTypes], Metric] = {}
        self._pending: list[dict[str, Any]] = []
        self._overflowed = False
        # True while the handler loads: its records are the model's (TorchServe gives the load a
        # request id of its own), not the Error level of a record outside any batch
        self.loading = False

    def declare(self, declarations: list[dict[str, Any]]) -> None:
        """The metrics the daemon's configuration declares (protocol.messages.load's
        ``model_metrics``), in the cache before the handler runs, as TorchServe's worker fills
        its cache from the configuration: ``get_metric`` finds each."""
        for metric in declarations:
            self.add_metric_to_cache(str(metric["name"]), str(metric.get("unit") or ""),
                                     [str(name) for name in metric.get("dimensions") or []],
                                     _metric_type(str(metric["type"])))

    def record(self, record: MetricRecord, default_dimensions: bool = False) -> None:
        """Keep ``record`` and queue it for the daemon. ``default_dimensions``: add TorchServe's
        ``ModelName`` and ``Level`` (``Model`` inside a batch, ``Error`` outside one) where the
        handler did not give them, as its add_* methods do."""
        self.records.append(record)
        if logger.isEnabledFor(logging.DEBUG):   # every batch records PredictionTime
            logger.debug("metric %s=%s %s type=%s dims=%s request=%s", record.name,
                         record.value, record.unit, record.metric_type.value,
                         ",".join(str(d) for d in record.dimensions), record.request_id)
        dims = [[str(d.name), str(d.value)] for d in record.dimensions]
        if default_dimensions:
            dims = self._with_defaults(dims)
        self._queue(messages.metric(record.name, record.unit, record.metric_type.value,
                                    record.value, dims, record.request_id))

    def _with_defaults(self, dims: list[list[str]]) -> list[list[str]]:
        names = {name for name, _ in dims}
        if "ModelName" not in names:
            dims.append(["ModelName", self.model_name])
        if "Level" not in names:
            in_batch = self.loading or self._request_id_of(0) is not None
            dims.append(["Level", "Model" if in_batch else "Error"])
        return dims

    def _queue(self, wire: dict[str, Any]) -> None:
        if len(self._pending) < MAX_PENDING:
            self._pending.append(wire)
        elif not self._overflowed:   # once for the worker's life, not once a batch
            self._overflowed = True
            logger.warning("more than %d metric records in one batch: the rest are not sent "
                           "(said once)", MAX_PENDING)

    def take_pending(self) -> list[dict[str, Any]]:
        """The records not yet sent (protocol.messages.metric maps)."""
        pending, self._pending = self._pending, []
        return pending

    def add_metric(self, name: str, value: float, unit: str, idx: int | None = None,
                   dimensions: list[Dimension] | None = None,
                   metric_type: MetricTypes = MetricTypes.COUNTER) -> None:
        request_id = self._request_id_of(idx) if idx is not None else None
        self.record(MetricRecord(name, value, unit, _metric_type(metric_type),
                                 list(dimensions or []), request_id), default_dimensions=True)

    def add_time(self, name: str, value: float, idx: int | None = None, unit: str = "ms",
                 dimensions: list[Dimension] | None = None,
                 metric_type: MetricTypes = MetricTypes.GAUGE) -> None:
        if unit not in TIME_UNITS:
            raise ValueError(f"unit for a time metric must be one of {sorted(TIME_UNITS)}")
        self.add_metric(name, value, TIME_UNITS[unit], idx, dimensions, metric_type)

    def add_size(self, name: str, value: float, idx: int | None = None, unit: str = "MB",
                 dimensions: list[Dimension] | None = None,
                 metric_type: MetricTypes = MetricTypes.GAUGE) -> None:
        if unit not in SIZE_UNITS:
            raise ValueError(f"unit for a size metric must be one of {sorted(SIZE_UNITS)}")
        self.add_metric(name, value, SIZE_UNITS[unit], idx, dimensions, metric_type)

    def add_percent(self, name: str, value: float, idx: int | None = None,
                    dimensions: list[Dimension] | None = None,
                    metric_type: MetricTypes = MetricTypes.GAUGE) -> None:
        self.add_metric(name, value, "Percent", idx, dimensions, metric_type)

    def add_counter(self, name: str, value: float, idx: int | None = None,
                    dimensions: list[Dimension] | None = None) -> None:
        self.add_metric(name, value, "Count", idx, dimensions, MetricTypes.COUNTER)

    def add_error(self, name: str, value: float,
                  dimensions: list[Dimension] | None = None) -> None:
        """A counter of errors, at TorchServe's ``Level`` ``Error``."""
        dims = list(dimensions or [])
        if not any(d.name == "Level" for d in dims):
            dims.append(Dimension("Level", "Error"))
        self.record(MetricRecord(name, value, "", MetricTypes.COUNTER, dims),
                    default_dimensions=True)

    def add_metric_to_cache(self, metric_name: str, unit: str,
                            dimension_names: list[str] | None = None,
                            metric_type: MetricTypes = MetricTypes.COUNTER) -> Metric:
        metric = Metric(self, metric_name, unit, dimension_names or [],
                        _metric_type(metric_type))
        self._metrics[(metric_name, metric.metric_type)] = metric
        return metric

    def get_metric(self, metric_name: str,
                   metric_type: MetricTypes = MetricTypes.COUNTER) -> Metric:
        try:
            return self._metrics[(metric_name, _metric_type(metric_type))]
        except KeyError:
            raise KeyError(f"metric {metric_name} of type {metric_type} was never added") \
                from None

    def values(self, name: str) -> list[Any]:
        """Every recorded value of ``name`` still held, oldest first."""
        return [record.value for record in self.records if record.name == name]


def _metric_type(value: MetricTypes | str) -> MetricTypes:
    return value if isinstance(value, MetricTypes) else MetricTypes(str(value).lower())
