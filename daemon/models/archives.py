"""A registration URL → a ready model directory: URL checks, download, safe extraction, manifest.

``prepare_archive`` is blocking (the daemon runs it in a worker thread) and all-or-nothing: when it
raises, nothing it created is left behind (no extraction directory, no downloaded file).

Extraction is written by hand rather than with ``extractall`` so that every entry is checked before
anything is written: no absolute paths, no ``..``, no device or special files, no symlink whose
target leaves the archive, no hard link to a file outside it (hard links are copied), and nothing is
ever written through a symlink. A final pass checks that no symlink chain resolves outside.
"""
from __future__ import annotations

import errno
import json
import logging
import lzma
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import yaml

from daemon.models.downloads import check_allowed, download_to_store, url_scheme
from daemon.errors import InternalServerError, InvalidModel, ModelNotFound

logger = logging.getLogger(__name__)

MANIFEST_PATH = "MAR-INF/MANIFEST.json"
DEFAULT_VERSION = "1.0"
DEFAULT_RUNTIME = "python"
_MANIFEST_TEXT_FIELDS = ("modelName", "handler", "serializedFile", "modelFile",
                         "requirementsFile", "configFile", "extensions", "envelope")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".mar", ".zip", ".tar")
# Errors that mean "this machine could not write", not "this archive is bad".
_HOST_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS,
                errno.EMFILE, errno.ENFILE, errno.ENOMEM}
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


class UnsafeEntry(Exception):
    def __init__(self, entry: str, why: str) -> None:
        super().__init__(f"unsafe entry {entry!r}: {why}")


def default_allowed_urls() -> list[str]:
    """URLs allowed when config sets no allowed_urls (files in the model store always are)."""
    return ["https://.*"]


def prepare_archive(url: str, *, model_store: Path, extract_root: Path, allowed_urls: list[str],
                    s3_sse_kms: bool = False, download_timeout: float = 120.0) -> PreparedArchive:
    """Resolve, fetch if remote, extract and read the archive a registration URL names.

    Raises daemon.errors exceptions with TorchServe's messages (SPEC 1.1, errors 3 to 9).
    """
    source, downloaded = resolve_source(url, model_store=Path(model_store),
                                        allowed_urls=allowed_urls, s3_sse_kms=s3_sse_kms,
                                        download_timeout=download_timeout)
    try:
        return _prepare_local(source, downloaded, Path(extract_root))
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
                   ) -> tuple[Path, bool]:
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
                             s3_sse_kms=s3_sse_kms, timeout=download_timeout), True


def _store_entry(name: str, model_store: Path) -> Path:
    """A file or directory directly in the model store; a name with a "/" is never one."""
    path = model_store / name
    if "/" in name or "\x00" in name or name == "." or not _is_file_or_dir(path):
        raise ModelNotFound(f"Model not found at: {name}")
    return path


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


def _prepare_local(source: Path, downloaded: bool, extract_root: Path) -> PreparedArchive:
    model_dir = source if source.is_dir() else extract_archive(source, extract_root)
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


# ---------------------------------------------------------------------------------- extraction

def extract_archive(archive: Path, extract_root: Path) -> Path:
    """Extract a .mar (zip) or tar(.gz) into a new directory under extract_root; return it."""
    kind = _archive_kind(archive)
    extract_root.mkdir(parents=True, exist_ok=True)
    dest = Path(tempfile.mkdtemp(dir=extract_root, prefix=_stem(archive.name)[:60] + "-"))
    try:
        if kind == "zip":
            _extract_zip(archive, dest)
        else:
            _extract_tar(archive, dest)
        _check_symlinks(dest)
    except BaseException as exc:
        shutil.rmtree(dest, ignore_errors=True)
        _raise_extraction_error(archive, exc)
        raise
    return dest


def _raise_extraction_error(archive: Path, exc: BaseException) -> None:
    """Turn an extraction failure into the error the client sees (or return to re-raise it)."""
    if isinstance(exc, UnsafeEntry):
        raise InvalidModel(f"Model archive {archive.name} has an {exc}") from exc
    if isinstance(exc, OSError) and exc.errno in _HOST_ERRNOS:
        raise InternalServerError(f"Failed to extract model archive {archive.name}: "
                                  f"{exc.strerror or exc}") from exc
    if isinstance(exc, (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error,
                        lzma.LZMAError, OSError, ValueError, UnicodeError)):
        raise InvalidModel(f"Model archive {archive.name} is corrupt or unreadable: "
                           f"{type(exc).__name__}: {exc}") from exc


def _archive_kind(archive: Path) -> str:
    """Sniff the content rather than trust the name: zip, tar (any compression), or refuse."""
    try:
        with archive.open("rb") as f:
            magic = f.read(4)
        if magic.startswith(b"PK"):
            return "zip"
        if tarfile.is_tarfile(archive):
            return "tar"
    except OSError as exc:
        raise InternalServerError(f"Cannot read model archive {archive.name}: {exc}") from exc
    raise InvalidModel(f"Model archive {archive.name} is neither a .mar (zip) file, "
                       f"a .tar.gz file, nor a directory")


def _stem(name: str) -> str:
    for suffix in _ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "model"
    return name or "model"


def _entry_parts(name: str, strip: str | None = None) -> list[str]:
    """An entry name as checked path components below the destination ([] = the top itself)."""
    if name.startswith(("/", "\\")):
        raise UnsafeEntry(name, "absolute path")
    if "\x00" in name:
        raise UnsafeEntry(name, "NUL in name")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeEntry(name, "'..' path component")
    if strip is not None and parts and parts[0] == strip:
        parts = parts[1:]
    return parts


def _safe_parent(dest: Path, parts: list[str], entry: str) -> Path:
    """Create the directories above an entry, refusing to go through any symlink."""
    current = dest
    for part in parts[:-1]:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            os.mkdir(current)
            continue
        if stat.S_ISLNK(mode):
            raise UnsafeEntry(entry, f"would be written through the symlink {part!r}")
        if not stat.S_ISDIR(mode):
            raise NotADirectoryError(errno.ENOTDIR, "a file is in the way", str(current))
    target = current / parts[-1]
    if os.path.islink(target):
        raise UnsafeEntry(entry, "would overwrite a symlink")
    return target


def _write_file(target: Path, data: IO[bytes], executable: bool) -> None:
    mode = 0o755 if executable else 0o644
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(data, out, 1 << 20)


def _make_dir(target: Path) -> None:
    if not target.is_dir():
        os.mkdir(target)


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            parts = _entry_parts(info.filename)
            if not parts:
                continue
            unix_mode = info.external_attr >> 16
            kind = stat.S_IFMT(unix_mode)
            if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                raise UnsafeEntry(info.filename, "symlink or special file")
            target = _safe_parent(dest, parts, info.filename)
            if info.is_dir():
                _make_dir(target)
                continue
            with zf.open(info) as data:
                _write_file(target, data, bool(unix_mode & 0o100))


def _tar_top_folder(names: list[str]) -> str | None:
    """The one top folder every entry sits in (torch-model-archiver's tgz has one), if any."""
    tops = {parts[0] for parts in (_entry_parts(n) for n in names) if parts}
    deeper = any(len(_entry_parts(n)) > 1 for n in names)
    if len(tops) == 1 and deeper:
        top = tops.pop()
        return None if top == "MAR-INF" else top
    return None


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        strip = _tar_top_folder([m.name for m in members])
        for member in members:
            parts = _entry_parts(member.name, strip)
            if not parts:
                continue
            if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
                raise UnsafeEntry(member.name, "device or special file")
            target = _safe_parent(dest, parts, member.name)
            if member.isdir():
                _make_dir(target)
            elif member.isreg():
                _write_file(target, tar.extractfile(member), bool(member.mode & 0o100))
            elif member.issym():
                _make_symlink(target, parts, member)
            else:
                _copy_hardlink(dest, target, member, strip)
        # tarfile stops at the end-of-archive blocks; reading on to the end of the compressed
        # stream makes gzip check its CRC and length, so a truncated download is caught.
        while tar.fileobj.read(1 << 20):
            pass


def _make_symlink(target: Path, parts: list[str], member: tarfile.TarInfo) -> None:
    link = member.linkname
    if link.startswith("/") or "\x00" in link:
        raise UnsafeEntry(member.name, f"symlink to the absolute path {link!r}")
    resolved = posixpath.normpath(posixpath.join(*parts[:-1], link) if parts[:-1] else link)
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeEntry(member.name, f"symlink to {link!r} points outside the archive")
    os.symlink(link, target)


def _copy_hardlink(dest: Path, target: Path, member: tarfile.TarInfo, strip: str | None) -> None:
    """Hard links become copies of a regular file already extracted from this archive."""
    refused = UnsafeEntry(member.name, f"hard link to {member.linkname!r} outside the archive")
    try:
        parts = _entry_parts(member.linkname, strip)
    except UnsafeEntry:
        raise refused from None
    source, mode = dest, 0
    for part in parts:
        source = source / part
        try:
            mode = os.lstat(source).st_mode
        except FileNotFoundError:
            raise refused from None
        if stat.S_ISLNK(mode):
            raise refused
    if not parts or not stat.S_ISREG(mode):
        raise refused
    shutil.copyfile(source, target)


def _check_symlinks(dest: Path) -> None:
    """After extraction: no symlink (or chain of them) may resolve outside dest."""
    root = os.path.realpath(dest)
    for folder, dirs, files in os.walk(dest):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                resolved = os.path.realpath(path)
                if resolved != root and not resolved.startswith(root + os.sep):
                    raise UnsafeEntry(os.path.relpath(path, dest), "symlink resolves outside")


# ---------------------------------------------------------------------------- manifest, YAML

def read_manifest(model_dir: Path, label: str) -> dict:
    """MAR-INF/MANIFEST.json, checked and with TorchServe's defaults filled in."""
    path = model_dir / MANIFEST_PATH
    if not path.is_file():
        raise InvalidModel(f"Model archive {label} has no {MANIFEST_PATH}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
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
