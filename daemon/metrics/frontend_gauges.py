"""TorchServe's frontend gauges (its default metrics.yaml's ``ts_metrics`` gauge list), with its
names, labels and units: the system metrics of the host (daemon/metrics/host.py) and of each GPU,
``QueueTime`` and ``WorkerLoadTime``.

TorchServe's gauges hold the last value written: ``QueueTime`` is the last answered request's
wait in the queue (ms; torchd sets it at the scrape from a number the request path keeps, so
the hot path touches no gauge), ``WorkerLoadTime`` each worker's time from its start to READY
(ms; labelled ``WorkerName="W-<id>-<model>_<version>"`` as TorchServe names its workers). A
series the metrics configuration leaves out lives in no registry (``registry_for`` says which).
``WorkerThreadTime`` (the time a Java worker thread spends on a batch besides the backend's) has
no counterpart: torchd has no worker threads.
"""
from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Gauge

from daemon.metrics.configured import FrontendLog
from daemon.metrics.counters import remove_child
from daemon.metrics.host import HOST_METRICS

HOST_LABELS = ("Level", "Hostname")
GPU_LABELS = ("Level", "DeviceId", "Hostname")
WORKER_LABELS = ("WorkerName", "Level", "Hostname")
LEVEL = "Host"   # TorchServe's Level of every frontend gauge


def worker_name(model: str, version: str, worker_id: str) -> str:
    return f"W-{worker_id}-{model}_{version}"


class FrontendGauges:
    def __init__(self, registry_for: Callable[[str], CollectorRegistry | None], hostname: str,
                 log: FrontendLog | None) -> None:
        self.hostname = hostname
        self._log = log
        self.host = {name: Gauge(name, text, HOST_LABELS, registry=registry_for(name))
                     for name, (_, text) in HOST_METRICS.items()}
        self.gpu_utilization = Gauge("GPUUtilization", "Percent of time a kernel ran on the GPU.",
                                     GPU_LABELS, registry=registry_for("GPUUtilization"))
        self.gpu_memory_utilization = Gauge("GPUMemoryUtilization",
                                            "Percent of the GPU's memory in use.", GPU_LABELS,
                                            registry=registry_for("GPUMemoryUtilization"))
        self.gpu_memory_used = Gauge("GPUMemoryUsed", "GPU memory in use, megabytes (MiB).",
                                     GPU_LABELS, registry=registry_for("GPUMemoryUsed"))
        self.queue_time = Gauge("QueueTime", "Milliseconds the last answered request waited in "
                                "its queue.", HOST_LABELS, registry=registry_for("QueueTime"))
        self.worker_load_time = Gauge("WorkerLoadTime", "Milliseconds from a worker's start to "
                                      "READY (its model loaded).", WORKER_LABELS,
                                      registry=registry_for("WorkerLoadTime"))

    def set_host_usage(self, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.host[name].labels(LEVEL, self.hostname).set(value)
        if self._log is not None:
            self._log.host(values)

    def set_gpu_usage(self, device_id: int, utilization: float, memory_percent: float,
                      memory_used_mib: float) -> None:
        labels = (LEVEL, str(device_id), self.hostname)
        self.gpu_utilization.labels(*labels).set(utilization)
        self.gpu_memory_utilization.labels(*labels).set(memory_percent)
        self.gpu_memory_used.labels(*labels).set(memory_used_mib)
        if self._log is not None:
            self._log.gpu(device_id, utilization, memory_percent, memory_used_mib)

    def forget_gpu(self, device_id: int) -> None:
        for gauge in (self.gpu_utilization, self.gpu_memory_utilization, self.gpu_memory_used):
            remove_child(gauge, LEVEL, str(device_id), self.hostname)

    def set_queue_time(self, ms: float) -> None:
        self.queue_time.labels(LEVEL, self.hostname).set(ms)

    def worker_loaded(self, model: str, version: str, worker_id: str, ms: float) -> None:
        name = worker_name(model, version, worker_id)
        self.worker_load_time.labels(name, LEVEL, self.hostname).set(ms)
        if self._log is not None:
            self._log.worker_loaded(name, ms)

    def forget_worker(self, model: str, version: str, worker_id: str) -> None:
        remove_child(self.worker_load_time, worker_name(model, version, worker_id), LEVEL,
                self.hostname)
