"""What the metrics configuration changes in the daemon's own TorchServe series.

With a ``metrics_config``, TorchServe shows only the frontend metrics its ``ts_metrics`` declares:
torchd does the same for its TorchServe-named series (``Requests2XX/4XX/5XX``, the three
``ts_inference_*``/``ts_queue_*`` counters, the host and GPU gauges); its ``torchd_*`` series are
always shown. In ``metrics_mode`` log, every update of a shown series is also a
``ts_metrics.log`` line; in legacy mode the three ``ts_*`` counters are not logged (TorchServe
<= 0.7 kept them on /metrics alone). The handlers' metrics follow the same configuration
(daemon/metrics/handlers.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemon.metrics.host import HOST_METRICS
from daemon.metrics.metrics_log import MetricsLog
from daemon.metrics.spec import MetricsConfigError, MetricsSpec, load_metrics_spec

MODES = ("prometheus", "log", "legacy")
# TorchServe's default units of its frontend metrics (its default metrics configuration)
DEFAULT_UNITS = {"Requests2XX": "Count", "Requests4XX": "Count", "Requests5XX": "Count",
                 "ts_inference_requests_total": "Count",
                 "ts_inference_latency_microseconds": "Microseconds",
                 "ts_queue_latency_microseconds": "Microseconds",
                 "GPUUtilization": "Percent", "GPUMemoryUtilization": "Percent",
                 "GPUMemoryUsed": "Megabytes", "QueueTime": "Milliseconds",
                 "WorkerLoadTime": "Milliseconds",
                 **{name: unit for name, (unit, _) in HOST_METRICS.items()}}
SYSTEM_METRICS = frozenset({"GPUUtilization", "GPUMemoryUtilization", "GPUMemoryUsed",
                            *HOST_METRICS})
PROMETHEUS_ONLY_IN_LEGACY = frozenset({"ts_inference_requests_total",
                                       "ts_inference_latency_microseconds",
                                       "ts_queue_latency_microseconds"})
REQUEST_LABELS = ("model_name", "model_version")
GPU_LABELS = ("Level", "DeviceId")


@dataclass(frozen=True)
class MetricsOptions:
    """The metrics configuration, as the daemon applies it."""

    spec: MetricsSpec | None = None    # None: no metrics_config (everything shown)
    auto_detect: bool = True           # show handler metrics the spec does not declare
    mode: str = "prometheus"
    log: MetricsLog | None = None      # the metrics log, in log and legacy modes
    system: bool = True                # TorchServe's system metrics (not disable_system_metrics)

    def shown(self, name: str) -> bool:
        """Whether the daemon's TorchServe-named frontend series ``name`` is shown."""
        if name in SYSTEM_METRICS and not self.system:
            return False
        return self.spec is None or name in self.spec.frontend


def metrics_options(config: Any) -> MetricsOptions:
    """The options a Config asks for: its metrics_config read (MetricsConfigError when it cannot
    be used), the metric log files opened in log and legacy modes."""
    spec = load_metrics_spec(config.metrics_config) if config.metrics_config else None
    auto_detect = config.model_metrics_auto_detect
    if auto_detect is None:   # TorchServe's default is off; torchd's without a configuration on
        auto_detect = spec is None
    log = _metrics_log(config) if config.metrics_logged else None
    return MetricsOptions(spec=spec, auto_detect=auto_detect, mode=config.metrics_mode, log=log,
                          system=not config.disable_system_metrics)


def _metrics_log(config: Any) -> MetricsLog:
    try:
        return MetricsLog(config.metrics_location, max_bytes=config.log_file_max_size)
    except OSError as exc:   # the start fails naming the setting, not just a path
        raise MetricsConfigError(f"cannot write the metric logs in {config.metrics_location} "
                                 f"(metrics_location, metrics_mode {config.metrics_mode}): "
                                 f"{exc}") from exc


class FrontendLog:
    """Writes the frontend's metric lines; only built when there is a metrics log."""

    def __init__(self, options: MetricsOptions, hostname: str) -> None:
        assert options.log is not None
        self.log = options.log
        self.hostname = hostname
        self.units = {name: unit for name, unit in DEFAULT_UNITS.items()
                      if options.shown(name) and not (
                          options.mode == "legacy" and name in PROMETHEUS_ONLY_IN_LEGACY)}
        if options.spec is not None:
            self.units.update({name: spec.unit for name, spec in options.spec.frontend.items()
                               if name in self.units})

    def _line(self, name: str, dims: tuple[tuple[str, str], ...], value: float) -> None:
        unit = self.units.get(name)
        if unit is not None:
            self.log.frontend(name, unit, dims, self.hostname, value)

    def request(self, model: str, version_label: str, answered: bool, queue_us: float,
                total_us: float) -> None:
        dims = tuple(zip(REQUEST_LABELS, (model, version_label)))
        self._line("ts_inference_requests_total", dims, 1.0)
        if answered:
            self._line("ts_inference_latency_microseconds", dims, total_us)
            self._line("ts_queue_latency_microseconds", dims, queue_us)
            self._line("QueueTime", (("Level", "Host"),), queue_us / 1000)

    def status(self, status_class: int) -> None:
        self._line(f"Requests{status_class}XX", (("Level", "Host"),), 1.0)

    def host(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            self._line(name, (("Level", "Host"),), value)

    def worker_loaded(self, worker_name: str, ms: float) -> None:
        self._line("WorkerLoadTime", (("WorkerName", worker_name), ("Level", "Host")), ms)

    def gpu(self, device_id: int, utilization: float, memory_percent: float,
            memory_used_mib: float) -> None:
        dims = tuple(zip(GPU_LABELS, ("Host", str(device_id))))
        self._line("GPUUtilization", dims, utilization)
        self._line("GPUMemoryUtilization", dims, memory_percent)
        self._line("GPUMemoryUsed", dims, memory_used_mib)
