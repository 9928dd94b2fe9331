"""Every per-model-version setting, declared once: :data:`MODEL_SETTINGS`.

One row per setting says everything torchd knows about it: the ``ModelSettings`` field, the
TorchServe camelCase key (the same in model-config.yaml, the config's ``models`` JSON, TorchServe's
``model_snapshot``, torchd's snapshots and describe), the strict parser of a config value, the
built-in default and the config key that replaces it for every model, how a layer's value is read
with TorchServe's lenient typing (``read``, see daemon/models/layers.py), the register parameter
that sets it explicitly (``request``), whether snapshots save it and describe shows it.

Who reads the table: the ``models`` JSON and ``model_snapshot`` parsers and the global keys'
defaults and help (daemon/config), the resolution of a version's settings from its layers
(daemon/models/layers.py, devices.py), snapshots both ways (daemon/models/snapshots.py), the
``model_snapshot`` registrations (daemon/ops/startup.py) and describe, REST and gRPC
(daemon/control/manager.py). ``ModelSettings`` is frozen: a registered version's settings change
only through ``Supervisor.update_settings``.

This module is a leaf of the config layer (it imports only daemon.config.values), so that
daemon/config may read it and every other layer may too.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from daemon.config.values import (InvalidValue, parse_bool, parse_int, parse_positive_int,
                                  parse_size)

# How a layer's value is read (daemon/models/layers.py implements each).
READ_INT = "int"            # a number that fits a Java int (TorchServe's type); else unset
READ_SECONDS = "seconds"    # READ_INT, and no timeout is 0 s or less: those mean the default
READ_CEILING = "ceiling"    # maxWorkers: never below minWorkers; unset: the explicit workers
READ_SIZE = "size"          # a byte count: any finite number >= 0 (beyond a Java int too)
READ_FLAG = "flag"          # true/false, or a string as config.properties reads booleans
READ_DEVICE = "device"      # parsed strictly and checked against the GPUs (devices.py)


def parse_device_type(value: Any) -> str:
    """A model's ``deviceType`` (TorchServe's model-config.yaml key): cpu or gpu."""
    text = str(value).strip().lower()
    if text not in ("cpu", "gpu"):
        raise InvalidValue(f"deviceType must be cpu or gpu, not {value!r}")
    return text


def parse_device_ids(value: Any) -> tuple[int, ...]:
    """A model's ``deviceIds``: GPU ids (CUDA ordinals), a list of integers >= 0."""
    items = value if isinstance(value, (list, tuple)) else [value]
    ids: list[int] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) or item < 0:
            raise InvalidValue(f"deviceIds entry {item!r} is not a GPU id (an integer >= 0)")
        if item not in ids:
            ids.append(item)
    return tuple(ids)


@dataclass(frozen=True)
class ModelSetting:
    """One per-model-version setting."""

    field: str                      # the ModelSettings attribute
    key: str                        # TorchServe's camelCase key (YAML, JSON, describe, snapshots)
    parse: Callable[[Any], Any]     # a ``models`` JSON / ``model_snapshot`` value, strictly
    default: Any                    # the built-in default
    help: str
    read: str = READ_INT            # how a layer's value is read (TorchServe's lenient types)
    floor: int | None = None        # a smaller value is raised to this
    config: str | None = None       # the config key whose value (when set) is every model's default
    request: str | None = None      # the RegisterRequest field that sets it explicitly
    explicit_zero: bool = False     # an explicit 0 stays 0 instead of meaning the default
    snapshot: bool = False          # snapshots save it, under ``key``, and restore it explicitly
    describe: bool = False          # describe (REST and gRPC) shows it, under ``key``
    # how describe shows the value, as TorchServe 0.12 does (None: left out); unset: as it is
    show: Callable[[Any], Any] | None = None
    doc_default: str | None = None  # how the default reads in docs, when not the literal value

    @property
    def snapshot_key(self) -> str | None:
        return self.key if self.snapshot else None


def _device_type_shown(value: str | None) -> str:
    return value or ""   # TorchServe's describe says "" for a model-config.yaml without one


def _device_ids_shown(value: tuple[int, ...]) -> list[int] | None:
    return list(value) or None   # TorchServe's describe leaves unset deviceIds out


M = ModelSetting
MODEL_SETTINGS: tuple[ModelSetting, ...] = (
    M("min_workers", "minWorkers", parse_int, 0,
      "Workers kept running (register's initial_workers, scale's min_worker).",
      floor=0, config="default_workers_per_model", request="initial_workers", snapshot=True,
      describe=True),
    M("max_workers", "maxWorkers", parse_int, 0,
      "Most workers the autoscaler may run; never below minWorkers (unset: the workers asked "
      "for).", read=READ_CEILING, request="max_workers", snapshot=True, describe=True,
      doc_default="minWorkers"),
    M("batch_size", "batchSize", parse_positive_int, 1,
      "Most requests in one batch.", floor=1, request="batch_size", snapshot=True,
      describe=True),
    M("max_batch_delay", "maxBatchDelay", parse_int, 100,
      "Milliseconds a batch waits for more requests, from its first request's arrival.",
      floor=0, request="max_batch_delay", snapshot=True, describe=True),
    M("response_timeout", "responseTimeout", parse_positive_int, 120,
      "Seconds a worker may take for a batch before 504 and a restart.", read=READ_SECONDS,
      config="default_response_timeout", request="response_timeout", snapshot=True,
      describe=True),
    M("startup_timeout", "startupTimeout", parse_positive_int, 120,
      "Seconds a worker may take to load the model (an explicit 0, as in TorchServe, fails "
      "every start).", read=READ_SECONDS, config="default_startup_timeout",
      request="startup_timeout", explicit_zero=True, snapshot=True, describe=True),
    M("job_queue_size", "jobQueueSize", parse_positive_int, 100,
      "Requests waiting per model version before 503.", floor=1, config="job_queue_size",
      request="job_queue_size", snapshot=True),
    M("max_requests_per_worker", "maxRequestsPerWorker", parse_int, 0,
      "Recycle a worker after this many requests (0: never).", floor=0,
      config="max_requests_per_worker"),
    M("max_worker_rss", "maxWorkerRss", parse_size, 0,
      "Recycle a worker whose RSS exceeds this many bytes (0: never).", read=READ_SIZE,
      config="max_worker_rss"),
    M("worker_threads", "workerThreads", parse_int, 0,
      "torch threads per worker (0: its share of the CPUs).", floor=0, config="worker_threads"),
    M("redispatch", "redispatchOnWorkerDeath", parse_bool, True,
      "A dead worker's batch runs once more on another worker.", read=READ_FLAG,
      config="redispatch_on_worker_death", describe=True),
    M("device_type", "deviceType", parse_device_type, None,
      "cpu: never a GPU; gpu or unset: one if there is.", read=READ_DEVICE, describe=True,
      show=_device_type_shown),
    M("device_ids", "deviceIds", parse_device_ids, (),
      "The GPUs its workers may use (empty: any).", read=READ_DEVICE, describe=True,
      show=_device_ids_shown),
    # serving modes (TorchServe 0.12's model-config.yaml keys; daemon/models/modes.py)
    M("sequence_batching", "sequenceBatching", parse_bool, False,
      "Stateful sequences: a sequence's requests run in order on the worker holding its state.",
      read=READ_FLAG),
    M("sequence_max_idle_ms", "sequenceMaxIdleMSec", parse_int, 0,
      "A sequence with no request for this many ms ends (sequenceBatching needs it > 0).",
      floor=0, describe=True),
    M("sequence_timeout_ms", "sequenceTimeoutMSec", parse_int, 0,
      "A sequence ends this many ms after it opened (0: never).", floor=0, describe=True),
    M("max_sequence_job_queue_size", "maxSequenceJobQueueSize", parse_positive_int, 1,
      "Requests one sequence may have waiting before 503.", floor=1, describe=True),
    M("max_num_sequence", "maxNumSequence", parse_positive_int, 1,
      "Open sequences before 503 (at least batchSize x maxWorkers).", floor=1, describe=True),
    M("continuous_batching", "continuousBatching", parse_bool, False,
      "The worker keeps a running batch; requests join and leave between steps.",
      read=READ_FLAG, describe=True),
    M("async_communication", "asyncCommunication", parse_bool, False,
      "The worker runs its handler in an event loop; batches go without waiting.",
      read=READ_FLAG),
    M("max_batches_in_flight", "maxBatchesInFlight", parse_positive_int, 64,
      "asyncCommunication: most batches sent to one worker and not yet answered.", floor=1),
    M("use_job_ticket", "useJobTicket", parse_bool, False,
      "Refuse a request at once (503) unless a worker is free to take it (idle workers "
      "outnumber the requests waiting).", read=READ_FLAG, describe=True),
    M("client_timeout_ms", "clientTimeoutInMills", parse_int, 0,
      "A request with no response started this many ms after its arrival gets 504; waiting, "
      "it never runs; running, its late answer is dropped (0: never).", floor=0, describe=True),
    M("max_retry_timeout", "maxRetryTimeoutInSec", parse_int, 300,
      "Seconds a failing worker slot is restarted, from its first failure since it was READY, "
      "before it is left FAILED (0: no restart).", floor=0, describe=True),
    M("preload_model", "preloadModel", parse_bool, False,
      "CPU workers forked from a template that ran the handler's initialize once, sharing its "
      "weights (see Preloaded models).", read=READ_FLAG, config="preload_model"),
)
del M

BY_FIELD: dict[str, ModelSetting] = {setting.field: setting for setting in MODEL_SETTINGS}
BY_KEY: dict[str, ModelSetting] = {setting.key: setting for setting in MODEL_SETTINGS}
_DEFAULT = {setting.field: setting.default for setting in MODEL_SETTINGS}


@dataclass(frozen=True)
class ModelSettings:
    """A model version's serving settings, resolved from their layers (daemon/models/layers.py).

    Frozen: the Supervisor swaps in a changed copy (``Supervisor.update_settings``). The fields
    are the table's, in its order, with its defaults (a test holds them to it).
    """

    min_workers: int = _DEFAULT["min_workers"]
    max_workers: int = _DEFAULT["max_workers"]
    batch_size: int = _DEFAULT["batch_size"]
    max_batch_delay: int = _DEFAULT["max_batch_delay"]            # milliseconds
    response_timeout: int = _DEFAULT["response_timeout"]          # seconds
    startup_timeout: int = _DEFAULT["startup_timeout"]            # seconds
    job_queue_size: int = _DEFAULT["job_queue_size"]
    max_requests_per_worker: int = _DEFAULT["max_requests_per_worker"]   # 0: never recycle
    max_worker_rss: int = _DEFAULT["max_worker_rss"]              # bytes; 0: never recycle
    worker_threads: int = _DEFAULT["worker_threads"]              # 0: the machine's share
    redispatch: bool = _DEFAULT["redispatch"]
    device_type: str | None = _DEFAULT["device_type"]
    device_ids: tuple[int, ...] = _DEFAULT["device_ids"]
    sequence_batching: bool = _DEFAULT["sequence_batching"]
    sequence_max_idle_ms: int = _DEFAULT["sequence_max_idle_ms"]
    sequence_timeout_ms: int = _DEFAULT["sequence_timeout_ms"]
    max_sequence_job_queue_size: int = _DEFAULT["max_sequence_job_queue_size"]
    max_num_sequence: int = _DEFAULT["max_num_sequence"]
    continuous_batching: bool = _DEFAULT["continuous_batching"]
    async_communication: bool = _DEFAULT["async_communication"]
    max_batches_in_flight: int = _DEFAULT["max_batches_in_flight"]
    use_job_ticket: bool = _DEFAULT["use_job_ticket"]
    client_timeout_ms: int = _DEFAULT["client_timeout_ms"]
    max_retry_timeout: int = _DEFAULT["max_retry_timeout"]      # seconds
    preload_model: bool = _DEFAULT["preload_model"]


def model_default(field: str) -> Any:
    """The built-in default of a setting (a global config key's own default is this too)."""
    return BY_FIELD[field].default


def config_default(setting: ModelSetting, config: Any) -> Any:
    """Every model's default for ``setting``: its config key's value when set, else built in."""
    value = getattr(config, setting.config) if setting.config else None
    return setting.default if value is None else value


def snapshot_entry(settings: ModelSettings) -> dict[str, Any]:
    """The settings a snapshot saves for a version, by key."""
    return {s.key: getattr(settings, s.field) for s in MODEL_SETTINGS if s.snapshot}


def request_values(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A saved entry's settings (torchd's snapshot, TorchServe's model_snapshot) as the
    RegisterRequest fields that restore them explicitly; keys the entry lacks are left out."""
    return {s.request: entry[s.key] for s in MODEL_SETTINGS
            if s.snapshot and s.request and s.key in entry}


def describe_entry(settings: ModelSettings) -> dict[str, Any]:
    """The settings describe shows, by key, in the table's order, as TorchServe shows them
    (a value shown as None is left out)."""
    shown = {s.key: described(s, getattr(settings, s.field))
             for s in MODEL_SETTINGS if s.describe}
    return {key: value for key, value in shown.items() if value is not None}


def described(setting: ModelSetting, value: Any) -> Any:
    return setting.show(value) if setting.show is not None else value


def model_settings_markdown() -> str:
    """The README's table of per-model settings: key, default, its global key, saved, shown."""
    lines = ["| key | default | every model's default from | snapshots | describe | meaning |",
             "|---|---|---|---|---|---|"]
    for s in MODEL_SETTINGS:
        default = s.doc_default or ("unset" if s.default is None else
                                    str(list(s.default) if isinstance(s.default, tuple)
                                        else s.default).lower())
        config = f"`{s.config}`" if s.config else ""
        saved, shown = ("yes" if flag else "" for flag in (s.snapshot, s.describe))
        lines.append(f"| `{s.key}` | `{default}` | {config} | {saved} | {shown} | {s.help} |")
    return "\n".join(lines) + "\n"
