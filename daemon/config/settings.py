"""One Config for the whole daemon, built once at start and passed down.

Sources, lowest precedence first: built-in defaults < config.properties < ``TS_<KEY>`` environment
variables < command line. This is the only module in torchd that reads the environment; callers
hand ``os.environ`` to :func:`load_config`.

Every setting is declared exactly once in daemon/config/declarations.py (name, parser, default,
help); load_config here, the CLI options and the README's key table all work from it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.config.declarations import (
    DEFAULT_ALLOWED_URLS,
    SETTINGS,
    SETTINGS_BY_NAME,
)
from daemon.config.files import (
    ConfigError,
    file_values,
    find_config_file,
    resolve_path,
    snapshot_named_as_config,
)
from daemon.config.model_settings import BY_FIELD, config_default
from protocol.messages import SEQUENCE_HEADERS
from daemon.config.values import BindAddress, StartupModel, split_model_entry
from daemon.osutil import usable_cpus

logger = logging.getLogger(__name__)

GRPC_PORTS = (7070, 7071)   # TorchServe's gRPC inference and management ports
# Keys the environment can set only through TS_<KEY>; these two are TorchServe's own names.
_ENV_ALIASES = {"LOG_LOCATION": "log_location", "METRICS_LOCATION": "metrics_location"}


# ---------------------------------------------------------------------------------------------
# The Config


@dataclass(frozen=True)
class Config:
    """Every setting, typed. Build it with :func:`load_config`; never mutate it."""

    inference_address: BindAddress
    management_address: BindAddress
    metrics_address: BindAddress
    grpc_inference_address: BindAddress
    grpc_management_address: BindAddress
    grpc_inference_port: int | None
    grpc_management_port: int | None
    enable_grpc_ssl: bool
    model_store: Path | None
    workflow_store: Path | None
    load_models: tuple[str, ...]
    default_workers_per_model: int | None
    max_workers: int
    job_queue_size: int
    max_request_size: int
    max_response_size: int
    request_header_timeout: float
    request_body_timeout: float
    max_stream_buffer_size: int
    response_send_timeout: float
    max_connections: int
    max_unpacked_archive_size: int | None
    default_response_timeout: int
    default_startup_timeout: int
    unregister_model_timeout: int
    shutdown_delay: float
    enable_model_api: bool | None
    disable_token_authorization: bool | None
    key_file: Path
    token_expiration_min: float
    allowed_urls: tuple[str, ...] | None
    install_py_dep_per_model: bool
    service_envelope: str | None
    models: dict[str, dict[str, dict[str, Any]]]
    model_snapshot: dict[str, Any] | None
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
    worker_threads: int
    redispatch_on_worker_death: bool
    preload_model: bool
    ts_header_key_sequence_id: str | None
    ts_header_key_sequence_start: str | None
    ts_header_key_sequence_end: str | None
    number_of_gpu: int | None
    ipex_enable: bool
    log_file_max_size: int
    metrics_mode: str
    metrics_config: Path | None
    model_metrics_auto_detect: bool | None
    metrics_location: Path
    disable_system_metrics: bool
    metric_time_interval: int
    # Not settings: where the values came from and what the process environment said.
    config_file: Path | None = None
    cwd: Path = field(default_factory=Path.cwd)
    notify_socket: str | None = None  # $NOTIFY_SOCKET (systemd Type=notify)
    watchdog_usec: int | None = None  # $WATCHDOG_USEC when $WATCHDOG_PID is unset or ours
    cuda_visible_devices: str | None = None  # $CUDA_VISIBLE_DEVICES (None: unset, all GPUs)
    # $TORCHINDUCTOR_CACHE_DIR: workers inherit it and inductor caches there; unset, each model
    # version gets a cache of its own in the runtime directory (one compile per version)
    torchinductor_cache_dir: str | None = None
    # False for ``torchd llm`` (as ts.llm_launcher's no_config_snapshots): its model directory
    # is a temporary one, which a snapshot restored later would name in vain
    write_snapshots: bool = True
    # A torchd snapshot named as the config file (--ts-config, TS_CONFIG_FILE): restored in
    # place of the newest one, even with --ncs; config_file is then the one it recorded
    restore_snapshot: Path | None = None
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    # -- derived ------------------------------------------------------------------------------
    @property
    def sequence_headers(self) -> dict[str, str]:
        """The sequence headers' names (id, start, end), lower-cased as HTTP compares them."""
        names = {"id": self.ts_header_key_sequence_id, "start": self.ts_header_key_sequence_start,
                 "end": self.ts_header_key_sequence_end}
        return {key: (name or SEQUENCE_HEADERS[key]).lower() for key, name in names.items()}

    @property
    def effective_workflow_store(self) -> Path | None:
        """Where workflow archives are found: workflow_store, else the model store (as
        TorchServe)."""
        return self.workflow_store or self.model_store

    @property
    def snapshot_dir(self) -> Path:
        return self.log_location / "config"

    @property
    def snapshots_written(self) -> bool:
        """--ncs turns snapshots off both ways, as TorchServe's --no-config-snapshots."""
        return self.write_snapshots and not self.ncs

    @property
    def metrics_logged(self) -> bool:
        """Whether metric updates are also written as lines (ts_metrics.log, model_metrics.log)."""
        return self.metrics_mode != "prometheus"

    @property
    def listeners(self) -> dict[str, BindAddress]:
        return {"inference": self.inference_address, "management": self.management_address,
                "metrics": self.metrics_address}

    @property
    def grpc_listeners(self) -> dict[str, BindAddress]:
        """The two gRPC listeners, ports and TLS resolved (a ``grpc_*_port`` replaces the
        address's port; TorchServe's address key holds only the host)."""
        return {"inference": self._grpc_address(self.grpc_inference_address,
                                                self.grpc_inference_port, GRPC_PORTS[0]),
                "management": self._grpc_address(self.grpc_management_address,
                                                 self.grpc_management_port, GRPC_PORTS[1])}

    def _grpc_address(self, address: BindAddress, port: int | None,
                      default_port: int) -> BindAddress:
        if address.is_unix:
            return address
        scheme = "https" if self.enable_grpc_ssl or address.is_tls else "http"
        return dataclasses.replace(address, scheme=scheme,
                                   port=port if port is not None else address.port or
                                   default_port)

    @property
    def serves_tls(self) -> bool:
        """Some listener, REST or gRPC, speaks TLS (private_key_file, certificate_file)."""
        return any(address.is_tls for address in (*self.listeners.values(),
                                                  *self.grpc_listeners.values()))

    @property
    def all_loopback(self) -> bool:
        """Every listener, gRPC's too, is a loopback host or a unix socket."""
        addresses = [*self.listeners.values(), *self.grpc_listeners.values()]
        return all(address.is_loopback for address in addresses)

    @property
    def model_api_enabled(self) -> bool:
        """Unset: on while both management listeners (REST and gRPC) are loopback."""
        if self.enable_model_api is not None:
            return self.enable_model_api
        return (self.management_address.is_loopback
                and self.grpc_listeners["management"].is_loopback)

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
    def load_all_models(self) -> bool:
        return self.load_models == ("all",)

    @property
    def startup_models(self) -> tuple[StartupModel, ...]:
        """Named startup models (empty for ``all``: the archives module lists the store)."""
        if self.load_all_models:
            return ()
        return tuple(split_model_entry(entry) for entry in self.load_models)

    def startup_workers_per_model(self, gpus: int) -> int:
        """Workers for a model loaded at start whose model-config.yaml and ``models`` JSON set
        none, as TorchServe: the setting, else (unset or 0, which TorchServe reads as "choose")
        one per GPU in use (``gpus``), else one per usable CPU."""
        if self.default_workers_per_model:
            return self.default_workers_per_model
        return gpus or usable_cpus()

    @property
    def register_workers_default(self) -> int:
        """``initial_workers`` default for a register call: the setting, else minWorkers'."""
        return int(config_default(BY_FIELD["min_workers"], self))

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


# ---------------------------------------------------------------------------------------------
# Building the Config


def load_config(argv_options: Mapping[str, Any], environ: Mapping[str, str],
                cwd: Path) -> Config:
    """Build the Config. ``argv_options`` maps setting names (plus ``ts_config``) to values from
    the command line; ``None`` values mean "not given". Raises ConfigError on invalid values."""
    cwd = Path(cwd).resolve()
    config_file = find_config_file(argv_options, environ, cwd)
    restore_snapshot, config_file = snapshot_named_as_config(config_file)
    raw: dict[str, tuple[Any, str]] = {
        setting.name: (setting.default, "default") for setting in SETTINGS}
    if config_file is not None:
        raw.update(file_values(config_file))
    raw.update(_env_values(environ))
    raw.update(_cli_values(argv_options))
    values = {name: _parse_setting(name, value, source) for name, (value, source) in raw.items()}
    _resolve_paths(values, cwd)
    config = Config(**values, config_file=config_file, restore_snapshot=restore_snapshot,
                    cwd=cwd,
                    notify_socket=environ.get("NOTIFY_SOCKET") or None,
                    watchdog_usec=_watchdog_usec(environ),
                    cuda_visible_devices=environ.get("CUDA_VISIBLE_DEVICES"),
                    torchinductor_cache_dir=environ.get("TORCHINDUCTOR_CACHE_DIR") or None,
                    sources={name: source for name, (_, source) in raw.items()})
    _check_grpc_ports(config)
    _check_tls(config)
    return config


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


def _resolve_paths(values: dict[str, Any], cwd: Path) -> None:
    """Relative paths are relative to the working directory torchd was started in."""
    for name in ("model_store", "workflow_store", "key_file", "log_location", "pid_file",
                 "log_config", "private_key_file", "certificate_file", "metrics_config",
                 "metrics_location"):
        if values.get(name) is not None:
            values[name] = resolve_path(values[name], cwd)
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


def _check_grpc_ports(config: Config) -> None:
    for name in ("grpc_inference_port", "grpc_management_port"):
        port = getattr(config, name)
        if port is not None and not 0 <= port <= 65535:
            raise ConfigError(f"invalid value for {name}: {port}: port out of range")


def _check_tls(config: Config) -> None:
    if not config.serves_tls:
        return
    for name in ("private_key_file", "certificate_file"):
        path = getattr(config, name)
        if path is None:
            raise ConfigError(f"{name} is required for an https:// address or "
                              "enable_grpc_ssl")
        if not path.is_file():
            raise ConfigError(f"invalid value for {name}: {str(path)!r}: file not found")
