"""Typed values of config settings and the parsers that produce them.

Each parser takes a raw value (a str from config.properties, the environment or the command
line, or an already typed value) and returns the typed value, or raises InvalidValue with a short
reason; daemon.config.settings adds the key and where the value came from.
"""
from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("daemon.config.settings")


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
        return f"{_url_host(self.host or '')}:{self.port}"

    @property
    def url(self) -> str:
        """The address as written in config: ``http://127.0.0.1:8081`` or ``unix:/path``."""
        if self.is_unix:
            return f"unix:{self.path}"
        return f"{self.scheme}://{_url_host(self.host or '')}:{self.port}"

    def __str__(self) -> str:
        return self.url


@dataclass(frozen=True)
class StartupModel:
    """One entry of ``load_models`` / ``--models``: ``name=url`` or a bare ``url``."""

    name: str | None
    url: str


# ---------------------------------------------------------------------------------------------
# Parsers

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


def parse_positive_float(value: Any) -> float:
    """A finite number of seconds above 0 (a limit of 0 would refuse everything)."""
    number = parse_float(value)
    if not 0 < number < float("inf"):
        raise InvalidValue("must be a finite number > 0")
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


def parse_optional_size(value: Any) -> int | None:
    """``parse_size``, or None for an empty value (unset)."""
    if value is None or str(value).strip() == "":
        return None
    return parse_size(value)


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


def parse_grpc_address(value: Any) -> BindAddress:
    """A gRPC listener: TorchServe's bare host (the port comes from grpc_*_port), ``host:port``,
    ``[v6]:port``, or any form parse_address takes. A missing port is None (filled in later)."""
    if isinstance(value, BindAddress):
        return value
    text = str(value).strip()
    if text.startswith(("unix:", "http://", "https://")):
        return parse_address(text)
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^:/\[\]]+)(?::(\d+))?", text)
    if not match:
        raise InvalidValue("expected host, host:port, [v6]:port or unix:/path")
    port = int(match.group(2)) if match.group(2) else None
    if port is not None and port > 65535:
        raise InvalidValue("port out of range")
    return BindAddress("http", host=match.group(1).strip("[]"), port=port)


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


def parse_optional_choice(*choices: str) -> Callable[[Any], str | None]:
    """One of ``choices`` (case-insensitive), or None for an empty or missing value."""
    strict = parse_choice(*choices)

    def parse(value: Any) -> str | None:
        return None if parse_optional_str(value) is None else strict(value)
    return parse


def _url_host(host: str) -> str:
    """A host as it stands in a URL or bind string: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host
