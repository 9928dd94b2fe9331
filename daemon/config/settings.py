"""One Config for the whole daemon, built once at start and passed down.

Sources, lowest precedence first: built-in defaults < config.properties < ``TS_<KEY>`` environment
variables < command line. This is the only module in torchd that reads the environment; callers
hand ``os.environ`` to :func:`load_config`.

Every setting is declared exactly once in :data:`SETTINGS` (name, parser, default, help); the CLI
options and the README's key table are generated from it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.config.values import (
    BindAddress,
    InvalidValue,
    StartupModel,
    parse_address,
    parse_bool,
    parse_choice,
    parse_float,
    parse_int,
    parse_models_json,
    parse_optional_bool,
    parse_optional_int,
    parse_optional_path,
    parse_optional_str,
    parse_path,
    parse_positive_int,
    parse_regex_list,
    parse_size,
    parse_startup_models,
    split_model_entry,
)
from daemon.config.properties import parse_properties

__all__ = [
    "ARCHIVE_SUFFIXES", "DEFAULT_ALLOWED_URLS", "IGNORED_KEYS", "SETTINGS", "SETTINGS_BY_NAME",
    "BindAddress", "Config", "ConfigError", "InvalidValue", "Setting", "StartupModel",
    "find_config_file", "load_config", "parse_address", "parse_properties",
    "read_properties_file", "settings_table_markdown", "split_model_entry",
    "startup_models_in_store",
]

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """An invalid setting; the message names the key, the value and where it came from."""


# ---------------------------------------------------------------------------------------------
# The settings table


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


S = Setting
SETTINGS: tuple[Setting, ...] = (
    S("inference_address", parse_address, "http://127.0.0.1:8080",
      "Inference API listener: http://host:port, https://host:port or unix:/path."),
    S("management_address", parse_address, "http://127.0.0.1:8081",
      "Management API listener."),
    S("metrics_address", parse_address, "http://127.0.0.1:8082", "Metrics API listener."),
    S("model_store", parse_optional_path, None,
      "Directory holding model archives; names in register calls resolve here."),
    S("load_models", parse_startup_models, (),
      "Models to load at start: 'all', or name=url / url entries (comma separated in files).",
      cli="--models", multi=True, doc_default="none"),
    S("default_workers_per_model", parse_optional_int, None,
      "Workers for a registered model when the request does not say. Startup models get one "
      "per CPU when unset; register calls get 0.", doc_default="unset"),
    S("max_workers", parse_int, 64, "Most workers over all models; larger requests get 400."),
    S("job_queue_size", parse_positive_int, 100,
      "Requests waiting per model version before 503."),
    S("max_request_size", parse_size, 6553500, "Largest request body in bytes (413 above)."),
    S("max_response_size", parse_size, 6553500, "Largest response a worker may send, bytes."),
    S("default_response_timeout", parse_positive_int, 120,
      "Seconds a worker may take for a batch before 504 and a restart."),
    S("default_startup_timeout", parse_positive_int, 120,
      "Seconds a worker may take to load its model."),
    S("unregister_model_timeout", parse_positive_int, 120,
      "Seconds unregister waits for in-flight requests."),
    S("enable_model_api", parse_optional_bool, None,
      "Allow register/unregister. Unset: on iff the management address is loopback.",
      flag=True, doc_default="follow bind address"),
    S("disable_token_authorization", parse_optional_bool, None,
      "Turn token auth off. Unset: off iff every listener is loopback or unix.",
      cli="--disable-token-auth", flag=True, doc_default="follow bind address"),
    S("key_file", parse_path, "key_file.json",
      "Token file (mode 0600) with management, inference and API keys."),
    S("allowed_urls", parse_regex_list, None,
      "Comma-separated regexes (full match) for archive URLs. Unset: https://.* plus files in "
      "the model store.", doc_default="https://.*"),
    S("install_py_dep_per_model", parse_bool, False,
      "pip-install an archive's requirements file into a directory of its own for that "
      "model's workers (which are then exec-spawned, not forked).", flag=True),
    S("models", parse_models_json, {},
      "JSON {name: {version: {minWorkers, maxWorkers, batchSize, maxBatchDelay, responseTimeout,"
      " startupTimeout, jobQueueSize, maxRequestsPerWorker, maxWorkerRss, marName,"
      " defaultVersion}}}: per-model settings (below request parameters and model-config.yaml).",
      cli="--models-config", doc_default="{}"),
    S("cors_allowed_origin", parse_optional_str, None, "Access-Control-Allow-Origin value."),
    S("cors_allowed_methods", parse_optional_str, None, "Access-Control-Allow-Methods value."),
    S("cors_allowed_headers", parse_optional_str, None, "Access-Control-Allow-Headers value."),
    S("private_key_file", parse_optional_path, None, "TLS private key for https:// listeners."),
    S("certificate_file", parse_optional_path, None, "TLS certificate for https:// listeners."),
    S("log_location", parse_path, "logs",
      "Directory for torchd.log (start), the pid file and snapshots (<log_location>/config). "
      "Env LOG_LOCATION also sets it."),
    S("pid_file", parse_optional_path, None,
      "Pid file of the running daemon.", doc_default="<log_location>/torchd.pid"),
    S("log_config", parse_optional_path, None,
      "Logging config file: .ini (fileConfig), .json or .yaml (dictConfig)."),
    S("ncs", parse_bool, False,
      "No config snapshot: do not restore the newest snapshot at start.", flag=True),
    S("heartbeat_interval", parse_float, 5.0, "Seconds between worker health checks."),
    S("autoscale_up_delay", parse_float, 2.0,
      "Seconds a queue must stay deep before a worker is added (max_worker > min_worker)."),
    S("autoscale_down_delay", parse_float, 30.0,
      "Seconds a worker above min_worker must idle before it is removed."),
    S("max_requests_per_worker", parse_int, 0,
      "Recycle a worker after this many requests (0: never)."),
    S("max_worker_rss", parse_size, 0,
      "Recycle a worker whose RSS exceeds this many bytes, K/M/G suffixes allowed (0: never)."),
    S("worker_spawn", parse_choice("zygote", "exec"), "zygote",
      "How workers start: forked from a zygote that imported torch, or a fresh exec."),
)
del S

SETTINGS_BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}

# TorchServe keys torchd accepts and deliberately does not use (warned as "ignored").
IGNORED_KEYS = frozenset({
    "number_of_netty_threads", "netty_client_threads", "number_of_gpu", "async_logging",
    "vmargs", "default_service_handler", "service_envelope", "decode_input_request",
    "enable_envvars_config", "blacklist_env_vars", "metrics_mode", "metrics_format",
    "metrics_config", "enable_metrics_api", "metric_time_interval", "disable_system_metrics",
    "system_metrics_cmd", "cpu_launcher_enable", "cpu_launcher_args", "workflow_store",
    "plugins_path", "prefer_direct_buffer", "use_native_io", "io_ratio", "keystore",
    "keystore_pass", "keystore_type", "initial_worker_port", "initial_distribution_port",
    "grpc_inference_port", "grpc_management_port", "grpc_inference_address",
    "grpc_management_address", "enable_grpc_ssl", "grpc_inference_max_connection_age_ms",
    "grpc_management_max_connection_age_ms", "grpc_inference_max_connection_age_grace_ms",
    "grpc_management_max_connection_age_grace_ms", "model_server_home", "model_snapshot",
    "snapshot_store", "limit_max_image_pixels", "cpp_log_config", "use_env_allowed_urls",
    "ts_open_inference_protocol", "token_expiration_min", "job_cleanup_interval",
    "enable_model_snapshot", "ipex_enable", "ipex_gpu_enable", "max_batch_delay", "batch_size",
    "default_batch_size", "header_key_sequence_id", "header_key_sequence_start",
    "header_key_sequence_end", "disable_snapshot", "log_level", "default_log_level",
    "enable_open_inference_protocol", "max_net_worker_threads",
})

DEFAULT_ALLOWED_URLS: tuple[str, ...] = ("https://.*",)

# Keys the environment can set only through TS_<KEY>; these two are TorchServe's own names.
_ENV_ALIASES = {"LOG_LOCATION": "log_location"}


# ---------------------------------------------------------------------------------------------
# The Config


@dataclass(frozen=True)
class Config:
    """Every setting, typed. Build it with :func:`load_config`; never mutate it."""

    inference_address: BindAddress
    management_address: BindAddress
    metrics_address: BindAddress
    model_store: Path | None
    load_models: tuple[str, ...]
    default_workers_per_model: int | None
    max_workers: int
    job_queue_size: int
    max_request_size: int
    max_response_size: int
    default_response_timeout: int
    default_startup_timeout: int
    unregister_model_timeout: int
    enable_model_api: bool | None
    disable_token_authorization: bool | None
    key_file: Path
    allowed_urls: tuple[str, ...] | None
    install_py_dep_per_model: bool
    models: dict[str, dict[str, dict[str, Any]]]
    cors_allowed_origin: str | None
    cors_allowed_methods: str | None
    cors_allowed_headers: str | None
    private_key_file: Path | None
    certificate_file: Path | None
    log_location: Path
    pid_file: Path
    log_config: Path | None
    ncs: bool
    heartbeat_interval: float
    autoscale_up_delay: float
    autoscale_down_delay: float
    max_requests_per_worker: int
    max_worker_rss: int
    worker_spawn: str
    # Not settings: where the values came from and what the process environment said.
    config_file: Path | None = None
    cwd: Path = field(default_factory=Path.cwd)
    notify_socket: str | None = None  # $NOTIFY_SOCKET (systemd Type=notify)
    watchdog_usec: int | None = None  # $WATCHDOG_USEC when $WATCHDOG_PID is unset or ours
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    # -- derived ------------------------------------------------------------------------------
    @property
    def snapshot_dir(self) -> Path:
        return self.log_location / "config"

    @property
    def listeners(self) -> dict[str, BindAddress]:
        return {"inference": self.inference_address, "management": self.management_address,
                "metrics": self.metrics_address}

    @property
    def all_loopback(self) -> bool:
        """Every listener is a loopback host or a unix socket."""
        return all(address.is_loopback for address in self.listeners.values())

    @property
    def model_api_enabled(self) -> bool:
        if self.enable_model_api is not None:
            return self.enable_model_api
        return self.management_address.is_loopback

    @property
    def token_auth_enabled(self) -> bool:
        if self.disable_token_authorization is not None:
            return not self.disable_token_authorization
        return not self.all_loopback

    @property
    def effective_allowed_urls(self) -> tuple[str, ...]:
        """The URL regexes in force; files in the model store are allowed separately."""
        return self.allowed_urls if self.allowed_urls is not None else DEFAULT_ALLOWED_URLS

    @property
    def allowed_url_patterns(self) -> tuple[re.Pattern[str], ...]:
        """Compiled for a case-insensitive full match (``pattern.fullmatch(url)``)."""
        return tuple(re.compile(p, re.IGNORECASE) for p in self.effective_allowed_urls)

    def url_allowed(self, url: str) -> bool:
        return any(pattern.fullmatch(url) for pattern in self.allowed_url_patterns)

    @property
    def load_all_models(self) -> bool:
        return self.load_models == ("all",)

    @property
    def startup_models(self) -> tuple[StartupModel, ...]:
        """Named startup models (empty for ``all``: use :func:`startup_models_in_store`)."""
        if self.load_all_models:
            return ()
        return tuple(split_model_entry(entry) for entry in self.load_models)

    @property
    def startup_workers_per_model(self) -> int:
        """Workers for a model loaded at start: the setting, else one per CPU."""
        if self.default_workers_per_model is not None:
            return self.default_workers_per_model
        return os.cpu_count() or 1

    @property
    def register_workers_default(self) -> int:
        """``initial_workers`` default for a register call: the setting, else 0."""
        return self.default_workers_per_model or 0

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half the systemd timeout), or None."""
        if not self.watchdog_usec:
            return None
        return self.watchdog_usec / 2_000_000

    def model_settings(self, name: str, version: str | None = None) -> dict[str, Any]:
        """The ``models`` JSON entry for a model version ({} when there is none).

        With ``version=None``: the entry marked defaultVersion, else the only one, else {}.
        """
        versions = self.models.get(name) or {}
        if version is not None:
            return dict(versions.get(version, {}))
        for settings in versions.values():
            if settings.get("defaultVersion"):
                return dict(settings)
        return dict(next(iter(versions.values()))) if len(versions) == 1 else {}

    def with_overrides(self, **changes: Any) -> Config:
        """A copy with some fields replaced (tests, and the CLI's derived pid file)."""
        return dataclasses.replace(self, **changes)


ARCHIVE_SUFFIXES = (".mar", ".tar.gz", ".tgz")


def startup_models_in_store(model_store: Path) -> list[StartupModel]:
    """``load_models=all``: every archive or archive directory directly in the model store."""
    found = []
    for entry in sorted(model_store.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() or entry.name.endswith(ARCHIVE_SUFFIXES):
            found.append(StartupModel(None, entry.name))
    return found


# ---------------------------------------------------------------------------------------------
# Properties files


def read_properties_file(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")
    return parse_properties(text)


# ---------------------------------------------------------------------------------------------
# Building the Config


def find_config_file(argv_options: Mapping[str, Any], environ: Mapping[str, str],
                     cwd: Path) -> Path | None:
    """``--ts-config``, else ``$TS_CONFIG_FILE``, else ``./config.properties`` if present."""
    explicit = argv_options.get("ts_config") or environ.get("TS_CONFIG_FILE")
    if explicit:
        path = _resolve(Path(explicit).expanduser(), cwd)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path
    default = cwd / "config.properties"
    return default if default.is_file() else None


def load_config(argv_options: Mapping[str, Any], environ: Mapping[str, str],
                cwd: Path) -> Config:
    """Build the Config. ``argv_options`` maps setting names (plus ``ts_config``) to values from
    the command line; ``None`` values mean "not given". Raises ConfigError on invalid values."""
    cwd = Path(cwd).resolve()
    config_file = find_config_file(argv_options, environ, cwd)
    raw: dict[str, tuple[Any, str]] = {
        setting.name: (setting.default, "default") for setting in SETTINGS}
    if config_file is not None:
        raw.update(_file_values(config_file))
    raw.update(_env_values(environ))
    raw.update(_cli_values(argv_options))
    values = {name: _parse_setting(name, value, source) for name, (value, source) in raw.items()}
    _resolve_paths(values, cwd)
    config = Config(**values, config_file=config_file, cwd=cwd,
                    notify_socket=environ.get("NOTIFY_SOCKET") or None,
                    watchdog_usec=_watchdog_usec(environ),
                    sources={name: source for name, (_, source) in raw.items()})
    _check_tls(config)
    return config


def _file_values(path: Path) -> dict[str, tuple[str, str]]:
    values: dict[str, tuple[str, str]] = {}
    for key, value in read_properties_file(path).items():
        if key in SETTINGS_BY_NAME:
            values[key] = (value, f"config file {path}")
        elif key in IGNORED_KEYS:
            logger.warning("config file %s: TorchServe key %r is ignored by torchd", path, key)
        else:
            logger.warning("config file %s: unknown key %r ignored", path, key)
    return values


def _env_values(environ: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    values: dict[str, tuple[str, str]] = {}
    for variable, name in _ENV_ALIASES.items():
        if environ.get(variable):
            values[name] = (environ[variable], f"environment {variable}")
    for setting in SETTINGS:
        variable = "TS_" + setting.name.upper()
        if variable in environ:
            values[setting.name] = (environ[variable], f"environment {variable}")
    return values


def _cli_values(argv_options: Mapping[str, Any]) -> dict[str, tuple[Any, str]]:
    values: dict[str, tuple[Any, str]] = {}
    for name, value in argv_options.items():
        if value is None or name == "ts_config":
            continue
        if name not in SETTINGS_BY_NAME:
            raise ConfigError(f"unknown option {name!r}")
        values[name] = (value, "command line")
    return values


def _parse_setting(name: str, value: Any, source: str) -> Any:
    try:
        return SETTINGS_BY_NAME[name].parse(value)
    except ValueError as exc:
        raise ConfigError(f"invalid value for {name}: {_show(value)} ({source}): {exc}") from None


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return repr(text if len(text) <= 200 else text[:200] + "...")


def _resolve(path: Path, cwd: Path) -> Path:
    return path if path.is_absolute() else cwd / path


def _resolve_paths(values: dict[str, Any], cwd: Path) -> None:
    """Relative paths are relative to the working directory torchd was started in."""
    for name in ("model_store", "key_file", "log_location", "pid_file", "log_config",
                 "private_key_file", "certificate_file"):
        if values.get(name) is not None:
            values[name] = _resolve(values[name], cwd)
    if values["pid_file"] is None:
        values["pid_file"] = values["log_location"] / "torchd.pid"


def _watchdog_usec(environ: Mapping[str, str]) -> int | None:
    usec, owner = environ.get("WATCHDOG_USEC"), environ.get("WATCHDOG_PID")
    if not usec:
        return None
    if owner and owner.strip() != str(os.getpid()):
        return None  # the watchdog belongs to another process (e.g. our parent)
    try:
        return int(usec) or None
    except ValueError:
        logger.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec)
        return None


def _check_tls(config: Config) -> None:
    if not any(address.is_tls for address in config.listeners.values()):
        return
    for name in ("private_key_file", "certificate_file"):
        path = getattr(config, name)
        if path is None:
            raise ConfigError(f"{name} is required for an https:// address")
        if not path.is_file():
            raise ConfigError(f"invalid value for {name}: {str(path)!r}: file not found")


# ---------------------------------------------------------------------------------------------
# Docs


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
