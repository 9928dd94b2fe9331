"""One Config for the whole daemon, built once at start and passed down.

Sources, lowest precedence first: built-in defaults < config.properties < ``TS_<KEY>`` environment
variables < command line. This is the only module in torchd that reads the environment; callers
hand ``os.environ`` to :func:`load_config`.

Every setting is declared exactly once in :data:`SETTINGS` (name, parser, default, help); the CLI
options and the README's key table are generated from it.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """An invalid setting; the message names the key, the value and where it came from."""


class InvalidValue(ValueError):
    """Raised by the parsers with a short reason; load_config adds the key and the source."""


# ---------------------------------------------------------------------------------------------
# Value types


@dataclass(frozen=True)
class BindAddress:
    """Where a listener binds: ``http(s)://host:port`` or ``unix:/path``."""

    scheme: str  # "http", "https" or "unix"
    host: str | None = None
    port: int | None = None
    path: Path | None = None

    @property
    def is_unix(self) -> bool:
        return self.scheme == "unix"

    @property
    def is_tls(self) -> bool:
        return self.scheme == "https"

    @property
    def is_loopback(self) -> bool:
        """True for unix sockets and loopback hosts; unknown host names count as exposed."""
        if self.is_unix:
            return True
        assert self.host is not None
        if self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def connect_host(self) -> str:
        """A host a local client can connect to (a wildcard bind is reached via loopback)."""
        assert self.host is not None
        if self.host == "0.0.0.0":
            return "127.0.0.1"
        if self.host == "::":
            return "::1"
        return self.host

    @property
    def bind(self) -> str:
        """The bind string hypercorn takes: ``host:port``, ``[v6]:port`` or ``unix:/path``."""
        if self.is_unix:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in (self.host or "") else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The address as written in config: ``http://127.0.0.1:8081`` or ``unix:/path``."""
        if self.is_unix:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in (self.host or "") else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def client_url(self) -> str:
        """Base URL a local client uses (wildcard hosts replaced by loopback)."""
        if self.is_unix:
            return "http://localhost"
        host = self.connect_host
        host = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{host}:{self.port}"

    def __str__(self) -> str:
        return self.url


@dataclass(frozen=True)
class StartupModel:
    """One entry of ``load_models`` / ``--models``: ``name=url`` or a bare ``url``."""

    name: str | None
    url: str


# ---------------------------------------------------------------------------------------------
# Parsers: raw value (str from file/env/CLI, or an already typed value) -> typed value.
# Each raises ValueError with a short reason; load_config wraps it into a ConfigError.

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-.]*")
_SIZE = re.compile(r"(\d+)\s*([kmgt]i?b?|b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidValue("expected true or false")


def parse_int(value: Any, minimum: int | None = 0) -> int:
    if isinstance(value, bool):
        raise InvalidValue("expected an integer")
    try:
        number = value if isinstance(value, int) else int(str(value).strip())
    except ValueError:
        raise InvalidValue("expected an integer") from None
    if minimum is not None and number < minimum:
        raise InvalidValue(f"must be >= {minimum}")
    return number


def parse_positive_int(value: Any) -> int:
    return parse_int(value, minimum=1)


def parse_float(value: Any) -> float:
    if isinstance(value, bool):
        raise InvalidValue("expected a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidValue("expected a number") from None
    if not number >= 0:  # also rejects NaN
        raise InvalidValue("must be >= 0")
    return number


def parse_size(value: Any) -> int:
    """Bytes; a plain integer or with a K/M/G/T suffix (binary units)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return parse_int(value)
    match = _SIZE.fullmatch(str(value).strip())
    if not match:
        raise InvalidValue("expected a size in bytes, e.g. 6553500 or 2G")
    unit = (match.group(2) or "").lower()[:1]
    return int(match.group(1)) * _SIZE_UNITS[unit]


def parse_optional_int(value: Any) -> int | None:
    if value is None or str(value).strip() == "":
        return None
    return parse_int(value)


def parse_optional_bool(value: Any) -> bool | None:
    if value is None or str(value).strip() == "":
        return None
    return parse_bool(value)


def parse_str(value: Any) -> str:
    return str(value).strip()


def parse_optional_str(value: Any) -> str | None:
    text = "" if value is None else str(value).strip()
    return text or None


def parse_address(value: Any) -> BindAddress:
    if isinstance(value, BindAddress):
        return value
    text = str(value).strip()
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        path = "/" + path.lstrip("/") if path.startswith("//") else path
        if not path:
            raise InvalidValue("unix: needs a socket path")
        return BindAddress("unix", path=Path(path))
    match = re.fullmatch(r"(https?)://(\[[0-9A-Fa-f:.]+\]|[^:/\[\]]+)(?::(\d+))?/?", text)
    if not match:
        raise InvalidValue("expected http://host:port, https://host:port or unix:/path")
    scheme, host, port = match.group(1), match.group(2).strip("[]"), match.group(3)
    number = int(port) if port else (443 if scheme == "https" else 80)
    if number > 65535:
        raise InvalidValue("port out of range")
    return BindAddress(scheme, host=host, port=number)


def parse_path(value: Any) -> Path:
    text = str(value).strip()
    if not text:
        raise InvalidValue("expected a path")
    return Path(text).expanduser()


def parse_optional_path(value: Any) -> Path | None:
    if value is None or str(value).strip() == "":
        return None
    return parse_path(value)


def _split_list(value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        out.extend(part.strip() for part in str(item).split(","))
    return [part for part in out if part]


def parse_startup_models(value: Any) -> tuple[str, ...]:
    """``all``, or entries ``name=url`` / ``url`` (comma or space separated on the CLI)."""
    if value is None:
        return ()
    entries = tuple(_split_list(value))
    if "all" in entries and len(entries) > 1:
        raise InvalidValue("'all' cannot be combined with other models")
    for entry in entries:
        model = split_model_entry(entry)
        if not model.url:
            raise InvalidValue(f"entry {entry!r} has no url")
    return entries


def split_model_entry(entry: str) -> StartupModel:
    """``name=url`` when the part before the first ``=`` is a model name, else a bare url.

    A bare http URL may contain ``=`` in its query string; a model name never contains ``/`` or
    ``:``, so those stay urls.
    """
    name, sep, url = entry.partition("=")
    if sep and _MODEL_NAME.fullmatch(name.strip()):
        return StartupModel(name.strip(), url.strip())
    return StartupModel(None, entry.strip())


def parse_regex_list(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    patterns = tuple(_split_list(value))
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise InvalidValue(f"invalid regular expression {pattern!r}: {exc}") from None
    return patterns or None


def parse_choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise InvalidValue("expected one of " + ", ".join(choices))
        return text
    return parse


# models JSON: {name: {version: {key: value}}}
_MODEL_KEYS: dict[str, Callable[[Any], Any]] = {
    "minWorkers": parse_int,
    "maxWorkers": parse_int,
    "batchSize": parse_positive_int,
    "maxBatchDelay": parse_int,
    "responseTimeout": parse_positive_int,
    "startupTimeout": parse_positive_int,
    "jobQueueSize": parse_positive_int,
    "marName": parse_str,
    "defaultVersion": parse_bool,
}


def parse_models_json(value: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """``{"name": {"version": {"minWorkers": 1, ...}}}``; typed and checked per key."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InvalidValue(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidValue("expected a JSON object {model: {version: {...}}}")
    models: dict[str, dict[str, dict[str, Any]]] = {}
    for name, versions in value.items():
        if not isinstance(versions, dict):
            raise InvalidValue(f"model {name!r}: expected an object of versions")
        models[name] = {}
        for version, settings in versions.items():
            models[name][str(version)] = _parse_model_settings(name, str(version), settings)
    return models


def _parse_model_settings(name: str, version: str, settings: Any) -> dict[str, Any]:
    where = f"model {name!r} version {version!r}"
    if not isinstance(settings, dict):
        raise InvalidValue(f"{where}: expected an object of settings")
    parsed: dict[str, Any] = {}
    for key, raw in settings.items():
        parser = _MODEL_KEYS.get(key)
        if parser is None:
            logger.warning("config models: %s: unknown setting %r ignored", where, key)
            continue
        try:
            parsed[key] = parser(raw)
        except ValueError as exc:
            raise InvalidValue(f"{where}: {key}={raw!r}: {exc}") from None
    low, high = parsed.get("minWorkers"), parsed.get("maxWorkers")
    if low is not None and high is not None and high < low:
        raise InvalidValue(f"{where}: maxWorkers cannot be less than minWorkers")
    return parsed


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
      "pip-install an archive's requirements file for its workers.", flag=True),
    S("models", parse_models_json, {},
      "JSON {name: {version: {minWorkers, maxWorkers, batchSize, maxBatchDelay, responseTimeout,"
      " startupTimeout, marName, defaultVersion}}} for startup models.",
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


def parse_properties(text: str) -> dict[str, str]:
    """Java-properties syntax: ``k=v``, ``k: v`` or ``k v``; ``#``/``!`` comments; a trailing
    backslash continues the line (leading blanks of the next line dropped); later keys win.
    Backslash escapes (``\\=``, ``\\:``, ``\\ ``, ``\\n``, ``\\t``, ``\\uXXXX``) are decoded.
    """
    result: dict[str, str] = {}
    for logical in _logical_lines(text.splitlines()):
        key, value = _split_key_value(logical)
        result[_unescape(key)] = _unescape(value)
    return result


def _logical_lines(lines: Iterable[str]) -> Iterable[str]:
    pending: str | None = None
    for raw in lines:
        line = raw.lstrip(" \t\f")
        if pending is None:
            if not line or line[0] in "#!":
                continue
            pending = ""
        if _ends_with_continuation(line):
            pending += line[:-1]
            continue
        yield pending + line
        pending = None
    if pending:
        yield pending


def _ends_with_continuation(line: str) -> bool:
    trailing = len(line) - len(line.rstrip("\\"))
    return trailing % 2 == 1


def _split_key_value(line: str) -> tuple[str, str]:
    index, length = 0, len(line)
    while index < length:
        char = line[index]
        if char == "\\":
            index += 2
            continue
        if char in "=: \t\f":
            break
        index += 1
    key = line[:index]
    rest = line[index:].lstrip(" \t\f")
    if rest[:1] in ("=", ":") and (index >= length or line[index] in " \t\f=:"):
        rest = rest[1:].lstrip(" \t\f")
    return key, rest.rstrip()


_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    out, index = [], 0
    while index < len(text):
        char = text[index]
        if char != "\\" or index + 1 >= len(text):
            out.append(char)
            index += 1
            continue
        nxt = text[index + 1]
        if nxt == "u" and re.fullmatch(r"[0-9A-Fa-f]{4}", text[index + 2:index + 6]):
            out.append(chr(int(text[index + 2:index + 6], 16)))
            index += 6
            continue
        out.append(_ESCAPES.get(nxt, nxt))
        index += 2
    return "".join(out)


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
