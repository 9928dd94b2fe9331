"""The config file: which one (``--ts-config``, ``$TS_CONFIG_FILE``, ``./config.properties``),
its TorchServe properties, and a torchd snapshot named in its place.

TorchServe's way back to a known good state is ``--ts-config <snapshot file>``: its snapshots
are properties files holding the whole configuration. torchd's snapshots are JSON (no
properties file can start with "{"): named as the config file, one is restored in place of the
newest snapshot, and the config file it recorded is read for the settings.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from daemon.config.declarations import IGNORED_KEYS, SETTINGS_BY_NAME, TORCHSERVE_SNAPSHOT_KEYS
from daemon.config.properties import parse_properties

logger = logging.getLogger(__name__)

# The key under which a snapshot records the config file its daemon read (daemon/ops/server.py)
SNAPSHOT_CONFIG_KEY = "configFile"


class ConfigError(ValueError):
    """An invalid setting; the message names the key, the value and where it came from."""


def find_config_file(argv_options: Mapping[str, Any], environ: Mapping[str, str],
                     cwd: Path) -> Path | None:
    """``--ts-config``, else ``$TS_CONFIG_FILE``, else ``./config.properties`` if present."""
    explicit = argv_options.get("ts_config") or environ.get("TS_CONFIG_FILE")
    if explicit:
        path = resolve_path(Path(explicit).expanduser(), cwd)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path
    default = cwd / "config.properties"
    return default if default.is_file() else None


def resolve_path(path: Path, cwd: Path) -> Path:
    """A relative path is relative to the directory torchd was started in."""
    return path if path.is_absolute() else cwd / path


def snapshot_named_as_config(path: Path | None) -> tuple[Path | None, Path | None]:
    """(snapshot to restore, config file to read) for the config file found: a torchd snapshot
    is restored, and the config file it recorded is read in its place."""
    if path is None:
        return None, None
    text = read_config_text(path)
    document = snapshot_document(text)
    if document is None:
        if text.lstrip().startswith("{"):   # a damaged snapshot: never read it as properties
            raise ConfigError(f"config file {path} starts with \"{{\" but is no torchd "
                              "snapshot (not a JSON object with \"models\"): repair it, or "
                              "name another")
        return None, path
    recorded = document.get(SNAPSHOT_CONFIG_KEY)
    if not isinstance(recorded, str) or not recorded:
        logger.info("config file %s is a torchd snapshot: restoring it, with no config file",
                    path)
        return path, None
    if not Path(recorded).is_file():
        raise ConfigError(f"config file {path} is a torchd snapshot whose config file "
                          f"{recorded} is gone: put it back, or remove \"{SNAPSHOT_CONFIG_KEY}\""
                          " from the snapshot")
    logger.info("config file %s is a torchd snapshot: restoring it, with its config file %s",
                path, recorded)
    return path, Path(recorded)


def snapshot_document(text: str) -> dict[str, Any] | None:
    """The state in ``text`` if it is a torchd snapshot (a JSON object with "models")."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) and "models" in document else None


def file_values(path: Path) -> dict[str, tuple[str, str]]:
    """The settings a properties file sets, each with where it came from."""
    values: dict[str, tuple[str, str]] = {}
    for key, value in parse_properties(read_config_text(path)).items():
        if key in SETTINGS_BY_NAME:
            values[key] = (value, f"config file {path}")
        elif key in TORCHSERVE_SNAPSHOT_KEYS:
            continue
        elif key in IGNORED_KEYS:
            logger.warning("config file %s: TorchServe key %r is ignored by torchd", path, key)
        else:
            logger.warning("config file %s: unknown key %r ignored", path, key)
    return values


def read_config_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        return path.read_text(encoding="latin-1")
