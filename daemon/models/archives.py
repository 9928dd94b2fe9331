"""A registration URL → a ready model directory: URL checks, download (daemon/models/downloads.py),
safe extraction (daemon/models/extraction.py), manifest and model YAML.

``prepare_archive`` is blocking (the daemon runs it in a worker thread) and all-or-nothing: when it
raises, nothing it created is left behind (no extraction directory, no downloaded file).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import yaml

from daemon.config.values import StartupModel
from daemon.errors import InvalidModel, ModelNotFound
from daemon.models.downloads import check_allowed, download_to_store, url_scheme
from daemon.models.extraction import ARCHIVE_SUFFIXES, extract_archive

logger = logging.getLogger(__name__)

MANIFEST_PATH = "MAR-INF/MANIFEST.json"
DEFAULT_VERSION = "1.0"
DEFAULT_RUNTIME = "python"
_MANIFEST_TEXT_FIELDS = ("modelName", "handler", "serializedFile", "modelFile",
                         "requirementsFile", "configFile", "extensions", "envelope")
YAML_MAX_BYTES = 4 << 20
YAML_MAX_NODES = 100_000
YAML_MAX_DEPTH = 64


@dataclass(frozen=True)
class PreparedArchive:
    source: Path              # the file or directory the url resolved to
    downloaded: bool          # we downloaded source into the model store (delete it on unregister)
    model_dir: Path           # the extracted archive (== source for a no-archive directory)
    manifest: dict            # MAR-INF/MANIFEST.json, with runtime and modelVersion defaults filled
    model_yaml_config: dict   # the manifest's configFile YAML ({} if none)

    @property
    def extracted(self) -> bool:
        """True if model_dir is our own copy (removed by remove_prepared)."""
        return self.model_dir != self.source


def prepare_archive(url: str, *, model_store: Path, extract_root: Path, allowed_urls: list[str],
                    s3_sse_kms: bool = False, download_timeout: float = 120.0,
                    max_size: int | None = None) -> PreparedArchive:
    """Resolve, fetch if remote, extract and read the archive a registration URL names.
    ``max_size``: max_unpacked_archive_size, for the download and the unpacking each (None:
    what leaves 1 GiB free on the filesystem written to).

    Raises daemon.errors exceptions with TorchServe's messages (SPEC 1.1, errors 3 to 9).
    """
    source, downloaded = resolve_source(url, model_store=Path(model_store),
                                        allowed_urls=allowed_urls, s3_sse_kms=s3_sse_kms,
                                        download_timeout=download_timeout, max_size=max_size)
    try:
        return _prepare_local(source, downloaded, Path(extract_root), max_size)
    except BaseException:
        # A download that cannot be used would only block the next attempt
        # ("Model file already exists"), so it goes too.
        if downloaded:
            source.unlink(missing_ok=True)
        raise


def remove_prepared(prepared: PreparedArchive) -> None:
    """Delete our extracted copy and, if we downloaded it, the archive in the model store."""
    if prepared.extracted:
        shutil.rmtree(prepared.model_dir, ignore_errors=True)
    if prepared.downloaded:
        try:
            prepared.source.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("cannot delete downloaded archive %s: %s", prepared.source, exc)


def resolve_source(url: str, *, model_store: Path, allowed_urls: list[str],
                   s3_sse_kms: bool = False, download_timeout: float = 120.0,
                   max_size: int | None = None) -> tuple[Path, bool]:
    """(path, downloaded) for a registration URL, checks in TorchServe's order."""
    if not url:
        raise ModelNotFound("empty url")
    if ".." in url:
        raise ModelNotFound(f"Relative path is not allowed in url: {url}")
    scheme = url_scheme(url)
    if scheme is None:
        return _store_entry(url, model_store), False
    check_allowed(url, allowed_urls)
    if scheme == "file":
        return _local_file(url), False
    return download_to_store(url, model_store=model_store, allowed_urls=allowed_urls,
                             s3_sse_kms=s3_sse_kms, timeout=download_timeout,
                             max_size=max_size), True


def _store_entry(name: str, model_store: Path) -> Path:
    """A file or directory directly in the model store, named by its name or by its absolute
    path (TorchServe's own examples register ``<model_store>/<name>``). Any other name with a
    "/" is never one: TorchServe would load any directory on disk by its path, torchd only
    what an operator put in the store (elsewhere: a file:// URL that allowed_urls permits)."""
    entry = name
    if name.startswith("/") and _parent_is(Path(name), model_store):
        entry = Path(name).name
    path = model_store / entry
    if "/" in entry or "\x00" in entry or entry in ("", ".") or not _is_file_or_dir(path):
        raise ModelNotFound(f"Model not found at: {name}")
    return path


def _parent_is(path: Path, directory: Path) -> bool:
    try:
        return path.parent.resolve() == directory.resolve()
    except (OSError, ValueError, RuntimeError):   # a NUL, a symlink loop
        return False


def _local_file(url: str) -> Path:
    parts = urlsplit(url)
    path = Path(url2pathname(parts.path))
    if ".." in path.parts:  # percent-encoded dots pass the raw-URL check
        raise ModelNotFound(f"Relative path is not allowed in url: {url}")
    if parts.netloc.lower() not in ("", "localhost") or not path.is_absolute() \
            or "\x00" in str(path) or not _is_file_or_dir(path):
        raise ModelNotFound(f"Model not found at: {url}")
    return path


def _is_file_or_dir(path: Path) -> bool:
    """Regular file or directory (following symlinks): a FIFO or device must never be opened."""
    try:
        mode = path.stat().st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISREG(mode) or stat.S_ISDIR(mode)


def _prepare_local(source: Path, downloaded: bool, extract_root: Path,
                   max_size: int | None = None) -> PreparedArchive:
    model_dir = source if source.is_dir() else extract_archive(source, extract_root, max_size)
    try:
        manifest = read_manifest(model_dir, source.name)
        yaml_config = read_model_yaml(model_dir, manifest)
    except BaseException:
        if model_dir != source:
            shutil.rmtree(model_dir, ignore_errors=True)
        raise
    logger.info("prepared %s (model %s version %s) in %s", source,
                manifest["model"].get("modelName"), manifest["model"]["modelVersion"], model_dir)
    return PreparedArchive(source=source, downloaded=downloaded, model_dir=model_dir,
                           manifest=manifest, model_yaml_config=yaml_config)


# ---------------------------------------------------------------------------- manifest, YAML

def read_manifest(model_dir: Path, label: str) -> dict:
    """MAR-INF/MANIFEST.json, checked and with TorchServe's defaults filled in."""
    path = model_dir / MANIFEST_PATH
    if not path.is_file():
        raise InvalidModel(f"Model archive {label} has no {MANIFEST_PATH}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # Unicode/JSONDecodeError: ValueErrors
        raise InvalidModel(f"{MANIFEST_PATH} in {label} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("model"), dict):
        raise InvalidModel(f"{MANIFEST_PATH} in {label} has no \"model\" object")
    model = dict(manifest["model"])
    for field in _MANIFEST_TEXT_FIELDS:
        if model.get(field) is not None and not isinstance(model[field], str):
            raise InvalidModel(f"{MANIFEST_PATH} in {label}: model.{field} must be a string")
    version = model.get("modelVersion")
    if isinstance(version, (int, float)) and not isinstance(version, bool):
        version = str(version)  # a hand-written manifest may say 2.0 for "2.0"
    if version is not None and not isinstance(version, str):
        raise InvalidModel(f"{MANIFEST_PATH} in {label}: model.modelVersion must be a string")
    model["modelVersion"] = version or DEFAULT_VERSION
    runtime = manifest.get("runtime")
    if runtime is not None and not isinstance(runtime, str):
        raise InvalidModel(f"{MANIFEST_PATH} in {label}: runtime must be a string")
    return {**manifest, "runtime": runtime or DEFAULT_RUNTIME, "model": model}


def read_model_yaml(model_dir: Path, manifest: dict) -> dict:
    """The manifest's configFile as a mapping of plain (msgpack-able) values; {} without one."""
    name = manifest["model"].get("configFile")
    if not name:
        return {}
    path = _file_in_model_dir(model_dir, name)
    if path.stat().st_size > YAML_MAX_BYTES:
        raise InvalidModel(f"configFile {name} is larger than {YAML_MAX_BYTES} bytes")
    try:
        loaded = yaml.safe_load(path.read_bytes())
    except (OSError, yaml.YAMLError) as exc:
        # PyYAML's messages span lines (with a source excerpt); an error message should not.
        raise InvalidModel(f"configFile {name} is not valid YAML: "
                           f"{' '.join(str(exc).split())}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise InvalidModel(f"configFile {name} must be a YAML mapping, "
                           f"not a {type(loaded).__name__}")
    return _plain(loaded, name, [YAML_MAX_NODES], 0)


def _file_in_model_dir(model_dir: Path, name: str) -> Path:
    parts = Path(name).parts
    if Path(name).is_absolute() or ".." in parts:
        raise InvalidModel(f"configFile {name} must be a path inside the archive")
    path = model_dir / name
    root = os.path.realpath(model_dir)
    if not path.is_file() or not os.path.realpath(path).startswith(root + os.sep):
        raise InvalidModel(f"configFile {name} named by the manifest is not in the archive")
    return path


def _plain(value: Any, name: str, budget: list[int], depth: int) -> Any:
    """Copy YAML data into msgpack-able values (dates become ISO text, sets lists), refusing
    alias bombs and self-references that would explode when serialised."""
    budget[0] -= 1
    if budget[0] < 0 or depth > YAML_MAX_DEPTH:
        raise InvalidModel(f"configFile {name} is too large or too deeply nested")
    if isinstance(value, dict):
        return {_plain(k, name, budget, depth + 1): _plain(v, name, budget, depth + 1)
                for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v, name, budget, depth + 1) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def startup_models_in_store(model_store: Path) -> list[StartupModel]:
    """``load_models=all``: every archive or archive directory directly in the model store."""
    found = []
    for entry in sorted(model_store.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() or entry.name.endswith(ARCHIVE_SUFFIXES):
            found.append(StartupModel(None, entry.name))
    return found
