"""Prometheus metrics served on the metrics port (SPEC 3).

`Metrics` owns its own registry, so several can live in one process (tests, restarts). The
scheduler and supervisor call its one-line methods; the metrics route calls `render()`.

TorchServe's series (`ts_inference_requests_total`, `ts_inference_latency_microseconds`,
`ts_queue_latency_microseconds`, `Requests2XX/4XX/5XX`) are rendered exactly as TorchServe renders
them: `# TYPE <name> counter` and samples named `<name>`. prometheus_client would append `_total`
to every counter sample (and add `_created` series), which would rename
`ts_inference_latency_microseconds` and `Requests2XX` under the dashboards and alerts written for
TorchServe. torchd's own series (`torchd_*`) follow current Prometheus conventions.
"""
from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, GCCollector, Histogram

from daemon.metrics.configured import FrontendLog, MetricsOptions
from daemon.metrics.counters import Names, TorchServeCounter, exposition, remove_child, wanted
from daemon.metrics.handlers import HandlerMetrics
from daemon.metrics.frontend_gauges import FrontendGauges
from daemon.metrics.tally import Tally

logger = logging.getLogger(__name__)

# What generate_latest produces; pinned rather than CONTENT_TYPE_LATEST, whose meaning moved to
# the 1.0.0 text format in newer prometheus_client releases.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

WORKER_STATES = ("STARTING", "READY", "STOPPING", "STOPPED", "BACKOFF", "FAILED")
AUTOSCALE_DIRECTIONS = ("up", "down")
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
# from a frame's build time (tens of us) to a task switch behind HTTP work (ms)
IDLE_GAP_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                    0.01, 0.1)
# Inference latency spans sub-millisecond models up to the 120 s default response timeout.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# TorchServe labels a request that named no version with this instead of the version it resolved.
DEFAULT_VERSION_LABEL = "default"

_MODEL_LABELS = ("model_name", "model_version")


class Metrics:
    """Every metric the daemon exports, with the updates its components make."""

    def __init__(self, collect_hook: Callable[[], None] | None = None,
                 hostname: str | None = None, options: MetricsOptions | None = None) -> None:
        self.options = options or MetricsOptions()
        self.registry = CollectorRegistry()
        # python_gc_*: the daemon's hot path makes no reference cycles, which these show
        GCCollector(registry=self.registry)
        self.hostname = hostname or socket.gethostname()
        self._collect_hook = collect_hook
        self._lock = threading.Lock()
        self._states: list[str] = list(WORKER_STATES)
        # the workers that have per-worker series (RSS, GPU memory), per version
        self._worker_ids: dict[tuple[str, str], set[str]] = {}
        self._known: set[tuple[str, str]] = set()
        # per (model, version, named_version): the ts_* label values and the latency child,
        # looked up once rather than on every request
        self._request_series: dict[tuple[str, str, bool], tuple[tuple[str, str, str], Any]] = {}
        self._batch_series: dict[tuple[str, str], Any] = {}
        self._gap_series: dict[tuple[str, str], Any] = {}
        self._build_torchserve_counters()
        self._build_torchd_metrics()
        self.handler_metrics = HandlerMetrics(
            self.hostname, declared=self.options.spec.model if self.options.spec else None,
            auto_detect=self.options.auto_detect, log=self.options.log)
        # None unless there is a metrics log: the per-request path checks it once
        self._frontend_log = (FrontendLog(self.options, self.hostname)
                              if self.options.log is not None else None)
        self.frontend_gauges = FrontendGauges(self._shown, self.hostname, self._frontend_log)
        # the last answered request's wait (ms), for QueueTime at the next scrape
        self._last_queue_ms: float | None = None

    def _build_torchserve_counters(self) -> None:
        ts_labels = ("model_name", "model_version", "hostname")
        self.ts_requests = TorchServeCounter(
            "ts_inference_requests_total", "Inference requests received, by model version.",
            ts_labels)
        self.ts_inference_latency = TorchServeCounter(
            "ts_inference_latency_microseconds",
            "Total microseconds from arrival to response of successful inference requests.",
            ts_labels)
        self.ts_queue_latency = TorchServeCounter(
            "ts_queue_latency_microseconds",
            "Total microseconds successful inference requests waited in the queue.", ts_labels)
        self.status_counters = {
            cls: TorchServeCounter(f"Requests{cls}XX", f"HTTP responses with a {cls}xx status.",
                                   ("Level", "Hostname"))
            for cls in (2, 4, 5)
        }
        self._status_key = ("Host", self.hostname)
        for counter in self.status_counters.values():
            # present from the first scrape, so rate() works
            counter.inc_key(self._status_key, 0)

    def _build_torchd_metrics(self) -> None:
        reg = self.registry
        self.queue_depth = Gauge("torchd_queue_depth", "Requests waiting in the model version's "
                                 "queue.", _MODEL_LABELS, registry=reg)
        self.inflight = Gauge("torchd_inflight_requests", "Requests of the model version "
                              "queued, gathering into a batch or in a worker: the per-replica "
                              "load signal for autoscaling.", _MODEL_LABELS, registry=reg)
        self.workers = Gauge("torchd_workers", "Workers of the model version in each state.",
                             _MODEL_LABELS + ("state",), registry=reg)
        self.streams_paused = Gauge("torchd_worker_streams_paused",
                                    "Workers of the model version whose streamed parts wait "
                                    "for a client that is not reading them.", _MODEL_LABELS,
                                    registry=reg)
        self.worker_restarts = Counter("torchd_worker_restarts_total",
                                       "Workers restarted after they died.", _MODEL_LABELS,
                                       registry=reg)
        self.redispatches = Counter("torchd_redispatched_requests_total",
                                    "Requests sent once more to another worker after theirs "
                                    "died with them.", _MODEL_LABELS, registry=reg)
        self.batch_size = Histogram("torchd_batch_size", "Requests per batch sent to a worker.",
                                    _MODEL_LABELS, buckets=BATCH_SIZE_BUCKETS, registry=reg)
        self.idle_gap = Histogram("torchd_worker_idle_gap_seconds",
                                  "At saturation (a whole batch waiting), the time from reading "
                                  "a worker's result to sending its next batch.", _MODEL_LABELS,
                                  buckets=IDLE_GAP_BUCKETS, registry=reg)
        self.worker_rss = Gauge("torchd_worker_rss_bytes", "Resident memory of each worker.",
                                _MODEL_LABELS + ("worker_id",), registry=reg)
        self.request_latency = Histogram("torchd_request_latency_seconds",
                                         "Arrival-to-response time of successful inference "
                                         "requests.", _MODEL_LABELS, buckets=LATENCY_BUCKETS,
                                         registry=reg)
        # vLLM's names (without its "vllm:" prefix), for dashboards written for LLM servers;
        # only for versions served with continuous batching
        self.llm_running = Gauge("llm_num_requests_running", "Requests in the running batches "
                                 "of the model version's workers (continuous batching).",
                                 _MODEL_LABELS, registry=reg)
        self.llm_waiting = Gauge("llm_num_requests_waiting", "Requests of the model version "
                                 "waiting to join a running batch (continuous batching).",
                                 _MODEL_LABELS, registry=reg)
        self.autoscale_events = Counter("torchd_autoscale_events_total",
                                        "Workers added (up) or removed (down) by the autoscaler.",
                                        _MODEL_LABELS + ("direction",), registry=reg)
        self.worker_gpu_memory = Gauge("torchd_worker_gpu_memory_bytes",
                                       "GPU memory of each worker process (where NVML reports "
                                       "it).", _MODEL_LABELS + ("worker_id",), registry=reg)

    def _shown(self, name: str) -> CollectorRegistry | None:
        # a series the metrics configuration leaves out is kept, in no registry
        return self.registry if self.options.shown(name) else None

    # -- updates -----------------------------------------------------------------------------

    def observe_request(self, model: str, version: str, status: int, queue_us: float,
                        total_us: float, named_version: bool = True) -> None:
        """Record one finished inference request for an existing model version.

        Every request counts in ts_inference_requests_total whatever its status (TorchServe
        counts on arrival); latencies are recorded for status < 400 only, as TorchServe records
        them only for answered predictions, so a burst of instant 503s cannot hide slow models.
        `named_version=False` (the path named no version) labels the ts_* series
        model_version="default", as TorchServe does; torchd_* series always get the version.
        """
        series = self._request_series.get((model, version, named_version))
        if series is None:
            series = self._new_request_series(model, version, named_version)
        ts, latency = series
        self.ts_requests.inc_key(ts)
        if status < 400:
            self.ts_inference_latency.inc_key(ts, total_us)
            self.ts_queue_latency.inc_key(ts, queue_us)
            latency.observe(total_us / 1e6)
            self._last_queue_ms = queue_us / 1000
        if self._frontend_log is not None:
            self._frontend_log.request(ts[0], ts[1], status < 400, queue_us, total_us)

    def _new_request_series(self, model: str, version: str,
                            named_version: bool) -> tuple[tuple[str, str, str], Any]:
        self._touch(model, version)
        ts = (model, version if named_version else DEFAULT_VERSION_LABEL, self.hostname)
        series = ts, Tally(self.request_latency.labels(model, version))
        with self._lock:
            self._request_series[(model, version, named_version)] = series
        return series

    def count_status(self, status: int) -> None:
        """Count one HTTP response of the inference or management port by status class."""
        counter = self.status_counters.get(status // 100)
        if counter is not None:
            counter.inc_key(self._status_key)
            if self._frontend_log is not None:
                self._frontend_log.status(status // 100)

    def observe_batch(self, model: str, version: str, size: int) -> None:
        self._series(self._batch_series, self.batch_size, model, version).observe(size)

    def observe_idle_gap(self, model: str, version: str, seconds: float) -> None:
        self._series(self._gap_series, self.idle_gap, model, version).observe(seconds)

    def _series(self, cache: dict[tuple[str, str], Any], histogram: Histogram, model: str,
                version: str) -> Any:
        """A version's child of a per-batch histogram, looked up once (labels() is not free)."""
        child = cache.get((model, version))
        if child is None:
            self._touch(model, version)
            child = Tally(histogram.labels(model, version))
            with self._lock:
                cache[(model, version)] = child
        return child

    def record_handler_metrics(self, model: str, version: str, records: Any) -> None:
        """What a batch's handler recorded (the RESULT frame's ``metrics``). Labelled by
        model, not version: they go when the model's last version does (forget_model)."""
        self.handler_metrics.record(model, records)

    def set_queue_depth(self, model: str, version: str, depth: int) -> None:
        self._touch(model, version)
        self.queue_depth.labels(model, version).set(depth)

    def set_inflight(self, model: str, version: str, count: int) -> None:
        self._touch(model, version)
        self.inflight.labels(model, version).set(count)

    def set_llm_requests(self, model: str, version: str, running: int, waiting: int) -> None:
        """A continuous-batching version's running and waiting requests (vLLM's gauges)."""
        self._touch(model, version)
        self.llm_running.labels(model, version).set(running)
        self.llm_waiting.labels(model, version).set(waiting)

    def set_streams_paused(self, model: str, version: str, count: int) -> None:
        self._touch(model, version)
        self.streams_paused.labels(model, version).set(count)

    def set_worker_states(self, model: str, version: str, counts: dict[str, int]) -> None:
        """Set the worker count of every state, zero for the states absent from `counts`."""
        self._touch(model, version)
        with self._lock:
            self._states.extend(s for s in counts if s not in self._states)
            states = list(self._states)
        for state in states:
            self.workers.labels(model, version, state).set(counts.get(state, 0))

    def redispatched(self, model: str, version: str, count: int) -> None:
        self._touch(model, version)
        self.redispatches.labels(model, version).inc(count)

    def worker_restarted(self, model: str, version: str) -> None:
        self._touch(model, version)
        self.worker_restarts.labels(model, version).inc()

    def set_worker_rss(self, model: str, version: str, worker_id: str, rss: int) -> None:
        self._touch(model, version)
        with self._lock:
            self._worker_ids.setdefault((model, version), set()).add(str(worker_id))
        self.worker_rss.labels(model, version, str(worker_id)).set(rss)

    def forget_worker(self, model: str, version: str, worker_id: str) -> None:
        with self._lock:
            self._worker_ids.get((model, version), set()).discard(str(worker_id))
        remove_child(self.worker_rss, model, version, str(worker_id))
        remove_child(self.worker_gpu_memory, model, version, str(worker_id))
        self.frontend_gauges.forget_worker(model, version, str(worker_id))

    def set_host_usage(self, values: dict[str, float]) -> None:
        """The host's TorchServe system metrics (daemon/metrics/host.py)."""
        self.frontend_gauges.set_host_usage(values)

    def set_gpu_usage(self, device_id: int, utilization: float, memory_percent: float,
                      memory_used_mib: float) -> None:
        """One GPU's TorchServe system metrics (refreshed at scrape time)."""
        self.frontend_gauges.set_gpu_usage(device_id, utilization, memory_percent,
                                           memory_used_mib)

    def forget_gpu(self, device_id: int) -> None:
        self.frontend_gauges.forget_gpu(device_id)

    def worker_loaded(self, model: str, version: str, worker_id: str, seconds: float) -> None:
        """A worker became READY ``seconds`` after it started (TorchServe's WorkerLoadTime)."""
        self.frontend_gauges.worker_loaded(model, version, str(worker_id), seconds * 1000)

    def set_worker_gpu_memory(self, model: str, version: str, worker_id: str,
                              used: int) -> None:
        self._touch(model, version)
        with self._lock:
            self._worker_ids.setdefault((model, version), set()).add(str(worker_id))
        self.worker_gpu_memory.labels(model, version, str(worker_id)).set(used)

    def autoscaled(self, model: str, version: str, direction: str) -> None:
        if direction not in AUTOSCALE_DIRECTIONS:
            raise ValueError(f"autoscale direction must be up or down, not {direction!r}")
        self._touch(model, version)
        self.autoscale_events.labels(model, version, direction).inc()

    def forget_model(self, model: str, version: str) -> None:
        """Drop every series of an unregistered model version.

        The ts_* "default" series of the model go with its last known version.
        """
        with self._lock:
            self._known.discard((model, version))
            self._request_series.pop((model, version, True), None)
            self._request_series.pop((model, version, False), None)
            self._batch_series.pop((model, version), None)
            self._gap_series.pop((model, version), None)
            last = not any(name == model for name, _ in self._known)
            workers = self._worker_ids.pop((model, version), set())
            states = list(self._states)
        for metric in (self.queue_depth, self.inflight, self.worker_restarts, self.redispatches,
                       self.batch_size, self.idle_gap, self.request_latency,
                       self.streams_paused, self.llm_running, self.llm_waiting):
            remove_child(metric, model, version)
        for state in states:
            remove_child(self.workers, model, version, state)
        for worker_id in workers:
            remove_child(self.worker_rss, model, version, worker_id)
            remove_child(self.worker_gpu_memory, model, version, worker_id)
            self.frontend_gauges.forget_worker(model, version, worker_id)
        for direction in AUTOSCALE_DIRECTIONS:
            remove_child(self.autoscale_events, model, version, direction)
        if last:   # handler metrics are labelled by model (ModelName), not by version
            self.handler_metrics.forget(model)
        ts_versions = (version, DEFAULT_VERSION_LABEL) if last else (version,)
        for counter in (self.ts_requests, self.ts_inference_latency, self.ts_queue_latency):
            for label in ts_versions:
                counter.remove((model, label, self.hostname))

    def _touch(self, model: str, version: str) -> None:
        with self._lock:
            self._known.add((model, version))

    # -- exposition --------------------------------------------------------------------------

    def flush_tallies(self) -> None:
        """The hot path's histogram observations into their series (see Tally)."""
        with self._lock:
            tallies = [latency for _, latency in self._request_series.values()]
            tallies += [*self._batch_series.values(), *self._gap_series.values()]
        for tally in tallies:
            tally.flush()

    def render(self, names: Names = None) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type, for GET /metrics (only the
        families ``names`` asks for, when given: TorchServe's ``name[]``)."""
        if self._collect_hook is not None:
            try:
                self._collect_hook()
            except Exception:  # a broken refresher must not take the scrape down with it
                logger.exception("metrics collect hook failed; serving the last values")
        self.flush_tallies()
        if self._last_queue_ms is not None:
            self.frontend_gauges.set_queue_time(self._last_queue_ms)
        counters = [self.ts_requests, self.ts_inference_latency, self.ts_queue_latency,
                    *self.status_counters.values()]
        legacy = "".join(counter.render() for counter in counters if self.options.shown(
            counter.name) and wanted(counter.name, names)).encode("utf-8")
        handlers = self.handler_metrics.render(names)
        return legacy + exposition(self.registry, names) + handlers, CONTENT_TYPE
