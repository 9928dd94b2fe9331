"""Every setting torchd has, declared once: name, parser, default, help.

load_config (daemon/config/settings.py), the CLI options (daemon/ops/options.py) and the README's
key table (:func:`settings_table_markdown`) all work from :data:`SETTINGS`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daemon.config.model_settings import MODEL_SETTINGS, model_default
from daemon.config.model_values import parse_model_snapshot, parse_models_json
from daemon.config.values import (
    parse_address,
    parse_bool,
    parse_choice,
    parse_float,
    parse_grpc_address,
    parse_int,
    parse_optional_bool,
    parse_optional_choice,
    parse_optional_int,
    parse_optional_path,
    parse_optional_size,
    parse_optional_str,
    parse_path,
    parse_positive_float,
    parse_positive_int,
    parse_regex_list,
    parse_size,
    parse_startup_models,
)
from protocol.messages import SEQUENCE_HEADERS


@dataclass(frozen=True)
class Setting:
    """One config key. ``cli`` is the long option (None: not on the command line)."""

    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    cli: str | None = ""  # "" means the default spelling --<name-with-dashes>
    flag: bool = False  # a bare --flag means true (an explicit true/false may follow)
    multi: bool = False  # takes one or more values (--models a=a.mar b=b.mar)
    doc_default: str | None = None  # how the default reads in docs, when not the literal value

    @property
    def option(self) -> str | None:
        if self.cli is None:
            return None
        return self.cli or "--" + self.name.replace("_", "-")


# The per-model keys (daemon/config/model_settings.py), as the help of the keys that set them.
MODEL_KEYS = tuple(setting.key for setting in MODEL_SETTINGS)
SNAPSHOT_KEYS = tuple(setting.key for setting in MODEL_SETTINGS if setting.snapshot)

# TorchServe's request envelopes (ts/torch_handler/request_envelope in the worker).
SERVICE_ENVELOPES = ("json", "body", "kserve", "kservev2")

S = Setting
SETTINGS: tuple[Setting, ...] = (
    S("inference_address", parse_address, "http://127.0.0.1:8080",
      "Inference API listener: http://host:port, https://host:port or unix:/path."),
    S("management_address", parse_address, "http://127.0.0.1:8081",
      "Management API listener."),
    S("metrics_address", parse_address, "http://127.0.0.1:8082", "Metrics API listener."),
    S("grpc_inference_address", parse_grpc_address, "127.0.0.1:7070",
      "gRPC inference listener (TorchServe's InferenceAPIsService and OIP's "
      "GRPCInferenceService): host, host:port or unix:/path."),
    S("grpc_management_address", parse_grpc_address, "127.0.0.1:7071",
      "gRPC management listener (TorchServe's ManagementAPIsService)."),
    S("grpc_inference_port", parse_optional_int, None,
      "Port of the gRPC inference listener; when set it replaces the address's port.",
      doc_default="7070"),
    S("grpc_management_port", parse_optional_int, None,
      "Port of the gRPC management listener; when set it replaces the address's port.",
      doc_default="7071"),
    S("enable_grpc_ssl", parse_bool, False,
      "Serve both gRPC listeners over TLS with private_key_file and certificate_file.",
      flag=True),
    S("model_store", parse_optional_path, None,
      "Directory holding model archives; names in register calls resolve here."),
    S("workflow_store", parse_optional_path, None,
      "Directory holding workflow archives (.war); names in POST /workflows resolve here.",
      doc_default="model store"),
    S("load_models", parse_startup_models, (),
      "Models to load at start: 'all', or name=url / url entries (comma separated in files).",
      cli="--models", multi=True, doc_default="none"),
    S("default_workers_per_model", parse_optional_int, None,
      "Workers for a registered model when neither the request nor its model-config.yaml "
      "says. Startup models get one per GPU in use, else one per CPU, when unset or 0; "
      "register calls get 0.",
      doc_default="unset"),
    S("max_workers", parse_int, 64, "Most workers over all models; larger requests get 400."),
    S("job_queue_size", parse_positive_int, model_default("job_queue_size"),
      "Requests waiting per model version before 503."),
    S("max_request_size", parse_size, 6553500, "Largest request body in bytes (413 above)."),
    S("max_response_size", parse_size, 6553500, "Largest response a worker may send, bytes."),
    # Hostile clients: time, connections and disk a client may hold (README, "Limits")
    S("request_header_timeout", parse_positive_float, 60.0,
      "Seconds a request head may take to arrive, on every HTTP listener; past it 408 "
      "(a new connection that sent nothing is closed)."),
    S("request_body_timeout", parse_positive_float, 60.0,
      "Seconds a request body may go without sending a byte; past it 408, or the connection "
      "is closed if the response has begun."),
    S("max_stream_buffer_size", parse_size, 4 * 1024 ** 2,
      "Bytes of a streamed answer the daemon keeps for a client that is not reading it, when "
      "pausing the worker would stall other requests (continuous batching, async workers, a "
      "batch of several); past it that answer is cut off. K/M/G suffixes allowed.",
      doc_default="4M"),
    S("response_send_timeout", parse_positive_float, 60.0,
      "Seconds a client may take none of a response the inference port is sending it (once "
      "more than 64 KiB of it waits), or of a stream that pauses its worker (gRPC too); past "
      "it the connection is dropped (a gRPC stream ends UNAVAILABLE) and its request "
      "abandoned as on a hang-up (nginx's send_timeout)."),
    S("max_connections", parse_positive_int, 10000,
      "Open connections per listener (HTTP and gRPC); past it 503 (gRPC: refused). Lowered at "
      "start to what RLIMIT_NOFILE allows."),
    S("max_unpacked_archive_size", parse_optional_size, None,
      "Bytes a model archive may unpack to, and a download may hold (400 above), K/M/G "
      "suffixes allowed. Unset: whatever leaves 1 GiB free on the filesystem written to (the "
      "runtime directory's; the model store's for a download).", doc_default="keep 1 GiB free"),
    S("default_response_timeout", parse_positive_int, model_default("response_timeout"),
      "Seconds a worker may take for a batch before 504 and a restart."),
    S("default_startup_timeout", parse_positive_int, model_default("startup_timeout"),
      "Seconds a worker may take to load its model."),
    S("unregister_model_timeout", parse_positive_int, 120,
      "Seconds unregister waits for in-flight requests."),
    S("shutdown_delay", parse_float, 0.0,
      "Seconds torchd keeps serving after SIGTERM with readiness already false (503), so a "
      "load balancer or Kubernetes Service stops sending first; then the drain."),
    S("enable_model_api", parse_optional_bool, None,
      "Allow register/unregister. Unset: on iff the management address is loopback.",
      flag=True, doc_default="follow bind address"),
    S("disable_token_authorization", parse_optional_bool, None,
      "Turn token auth off. Unset: off iff every listener is loopback or unix.",
      cli="--disable-token-auth", flag=True, doc_default="follow bind address"),
    S("key_file", parse_path, "key_file.json",
      "Token file (mode 0600) with management, inference and API keys. A read-only one "
      "readable by its group alone (a Secret, mode 0440) is used as it is, without rotation."),
    S("token_expiration_min", parse_float, 60.0,
      "Minutes a management or inference key torchd makes (at start, or through /token) is "
      "accepted for, as TorchServe's; its expiration time is in the key file. A key file's "
      "own keys without one never expire."),
    S("allowed_urls", parse_regex_list, None,
      "Comma-separated regexes (full match) for archive URLs. Unset: https://.* plus files in "
      "the model store.", doc_default="https://.*"),
    S("install_py_dep_per_model", parse_bool, False,
      "pip-install an archive's requirements file into a directory of its own for that "
      "model's workers (which are then exec-spawned, not forked).", flag=True),
    S("service_envelope", parse_optional_choice(*SERVICE_ENVELOPES), None,
      "Request envelope every handler is wrapped in, as TorchServe's: json (instances in, "
      "predictions out), body, kserve (KServe v1), kservev2 (Open Inference Protocol). "
      "Unset: none.", doc_default="unset"),
    S("models", parse_models_json, {},
      "JSON {name: {version: {" + ", ".join(MODEL_KEYS) + ", marName, defaultVersion}}}: "
      "per-model settings (below request parameters and model-config.yaml).",
      cli="--models-config", doc_default="{}"),
    S("model_snapshot", parse_model_snapshot, None,
      "TorchServe's JSON {\"name\", \"modelCount\", \"models\": {name: {version: {marName, "
      "defaultVersion, " + ", ".join(SNAPSHOT_KEYS) + ", ...}}}}: the models to load at start, "
      "in place of the newest snapshot (even with --ncs) and of load_models.",
      cli="--model-snapshot", doc_default="unset"),
    S("cors_allowed_origin", parse_optional_str, None, "Access-Control-Allow-Origin value."),
    S("cors_allowed_methods", parse_optional_str, None, "Access-Control-Allow-Methods value."),
    S("cors_allowed_headers", parse_optional_str, None, "Access-Control-Allow-Headers value."),
    S("private_key_file", parse_optional_path, None, "TLS private key for https:// listeners."),
    S("certificate_file", parse_optional_path, None, "TLS certificate for https:// listeners."),
    S("log_location", parse_path, "logs",
      "Directory for the logs of torchd start and --foreground (ts_log.log, model_log.log, "
      "access_log.log), the pid file and snapshots (<log_location>/config). "
      "Env LOG_LOCATION also sets it."),
    S("log_file_max_size", parse_size, 100 * 1024 * 1024,
      "The logs of torchd start and --foreground and the metric logs are set aside past "
      "this size as <name>.1 ... <name>.5, the oldest dropped, as TorchServe's log4j2 "
      "configuration rolls its logs; 0: never. K/M/G suffixes allowed.", doc_default="100M"),
    S("metrics_mode", parse_choice("prometheus", "log", "legacy"), "prometheus",
      "prometheus: /metrics only; log: also TorchServe's metric log lines (ts_metrics.log, "
      "model_metrics.log); legacy: log, but the ts_inference_*/ts_queue_* counters on /metrics "
      "only. /metrics is served in every mode (TorchServe's default, log, serves nothing there)."),
    S("metrics_config", parse_optional_path, None,
      "TorchServe's metrics.yaml: the frontend and model metrics shown, with their types and "
      "dimensions.", doc_default="unset: every metric shown"),
    S("model_metrics_auto_detect", parse_optional_bool, None,
      "Show handler metrics that metrics_config does not declare.",
      doc_default="true without metrics_config, false with it"),
    S("metrics_location", parse_path, "logs",
      "Directory of the metric logs (metrics_mode log or legacy), apart from log_location as "
      "in TorchServe. Env METRICS_LOCATION also sets it."),
    S("disable_system_metrics", parse_bool, False,
      "Leave out TorchServe's system metrics (CPUUtilization, MemoryUsed, DiskUsage, ... and "
      "the GPUs'), on /metrics and in the metric log."),
    S("metric_time_interval", parse_int, 60,
      "Seconds between the system metric lines of the metric log (metrics_mode log or "
      "legacy; 0: none). /metrics reads them at each scrape."),
    S("pid_file", parse_optional_path, None,
      "Pid file of the running daemon.", doc_default="<log_location>/torchd.pid"),
    S("log_config", parse_optional_path, None,
      "Logging config file: .ini (fileConfig), .json or .yaml (dictConfig)."),
    S("ncs", parse_bool, False,
      "No config snapshots (TorchServe's --no-config-snapshots): the newest is not restored "
      "at start, and none is written.", flag=True),
    S("heartbeat_interval", parse_float, 5.0, "Seconds between worker health checks."),
    S("autoscale_up_delay", parse_float, 2.0,
      "Seconds a queue must stay deep before a worker is added (max_worker > min_worker)."),
    S("autoscale_down_delay", parse_float, 30.0,
      "Seconds a worker above min_worker must idle before it is removed."),
    S("max_requests_per_worker", parse_int, model_default("max_requests_per_worker"),
      "Recycle a worker after this many requests (0: never)."),
    S("max_worker_rss", parse_size, model_default("max_worker_rss"),
      "Recycle a worker whose RSS exceeds this many bytes, K/M/G suffixes allowed (0: never)."),
    S("worker_spawn", parse_choice("zygote", "exec"), "zygote",
      "How workers start: forked from a zygote that imported torch, or a fresh exec."),
    S("redispatch_on_worker_death", parse_bool, model_default("redispatch"),
      "When a worker dies with a batch, send its requests once more to another worker (a "
      "request meeting a second death fails with 500). Off for handlers with side effects; "
      "per model: redispatchOnWorkerDeath."),
    S("preload_model", parse_bool, model_default("preload_model"),
      "Fork each CPU model's workers from a template process that ran the handler's "
      "initialize once, so that they share its weights; per model: preloadModel."),
    S("worker_threads", parse_int, model_default("worker_threads"),
      "torch intra- and inter-op threads per worker. 0: the CPUs torchd may use (cgroup quota "
      "and affinity) divided by the workers running, at least 1."),
    S("ipex_enable", parse_bool, False,
      "Optimize models with Intel Extension for PyTorch (BaseHandler's ipex.optimize, when no "
      "pt2 compile applies); a worker without intel_extension_for_pytorch fails to load."),
    S("ts_header_key_sequence_id", parse_optional_str, SEQUENCE_HEADERS["id"],
      "Request header naming a request's sequence (sequenceBatching); the handler's "
      "context.header_key_sequence_id."),
    S("ts_header_key_sequence_start", parse_optional_str, SEQUENCE_HEADERS["start"],
      "Request header (true) that opens a sequence."),
    S("ts_header_key_sequence_end", parse_optional_str, SEQUENCE_HEADERS["end"],
      "Request header (true), or response header (sequence ids, ';'-separated), that ends a "
      "sequence."),
    S("number_of_gpu", parse_optional_int, None,
      "GPUs to place workers on: the first N that NVML finds (and CUDA_VISIBLE_DEVICES shows). "
      "0: every worker on the CPU; more than there are: all of them, with a warning.",
      doc_default="every visible GPU"),
)
del S

SETTINGS_BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}

# TorchServe keys torchd accepts and deliberately does not use (warned as "ignored").
IGNORED_KEYS = frozenset({
    "number_of_netty_threads", "netty_client_threads", "async_logging",
    "vmargs", "default_service_handler", "decode_input_request",
    "enable_envvars_config", "blacklist_env_vars", "metrics_format", "enable_metrics_api",
    "system_metrics_cmd", "cpu_launcher_enable", "cpu_launcher_args",
    "plugins_path", "prefer_direct_buffer", "use_native_io", "io_ratio", "keystore",
    "keystore_pass", "keystore_type", "initial_worker_port", "initial_distribution_port",
    "grpc_inference_max_connection_age_ms",
    "grpc_management_max_connection_age_ms", "grpc_inference_max_connection_age_grace_ms",
    "grpc_management_max_connection_age_grace_ms", "model_server_home",
    "snapshot_store", "limit_max_image_pixels", "cpp_log_config", "use_env_allowed_urls",
    "ts_open_inference_protocol", "job_cleanup_interval",
    "enable_model_snapshot", "ipex_gpu_enable", "max_batch_delay", "batch_size",
    "default_batch_size", "disable_snapshot", "log_level", "default_log_level",
    "enable_open_inference_protocol", "max_net_worker_threads",
})

# What TorchServe writes into its snapshot files besides settings (the config file it had read,
# its version): bookkeeping, read silently when such a snapshot is named as the config file.
TORCHSERVE_SNAPSHOT_KEYS = frozenset({"tsConfigFile", "version"})

# allowed_urls when the config sets none (files in the model store are always allowed).
DEFAULT_ALLOWED_URLS: tuple[str, ...] = ("https://.*",)


def settings_table_markdown() -> str:
    """The README's key table: key, command-line option, default, meaning."""
    lines = ["| key | option | default | meaning |", "|---|---|---|---|"]
    for setting in SETTINGS:
        default = setting.doc_default
        if default is None:
            default = "unset" if setting.default is None else str(setting.default)
            default = str(default).lower() if isinstance(setting.default, bool) else default
        option = f"`{setting.option}`" if setting.option else ""
        lines.append(f"| `{setting.name}` | {option} | `{default}` | {setting.help} |")
    return "\n".join(lines) + "\n"
