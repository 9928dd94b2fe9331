"""Safe extraction of a model archive: a .mar (zip) or a tar (any compression) into a new
directory.

Extraction is written by hand rather than with ``extractall`` so that every entry is checked before
anything is written: no absolute paths, no ``..``, no device or special files, no symlink whose
target leaves the archive, no hard link to a file outside it (hard links are copied), and nothing is
ever written through a symlink. A final pass checks that no symlink chain resolves outside.
What an archive unpacks to is bounded (daemon/models/size_limits.py): the members' declared
sizes are summed before anything is written, and the bytes written are counted as they go.
"""
from __future__ import annotations

import errno
import lzma
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import IO

from daemon.errors import InternalServerError, InvalidModel
from daemon.models.size_limits import Counter, SizeLimit, TooLarge, size_limit

# The names model archives go by (load_models=all looks for them in the model store). What an
# archive holds is sniffed, never trusted from the name: the suffix only names things.
ARCHIVE_SUFFIXES = (".mar", ".tar.gz", ".tgz")
# Errors that mean "this machine could not write", not "this archive is bad".
_HOST_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EACCES, errno.EPERM,
                errno.EROFS, errno.EMFILE, errno.ENFILE, errno.ENOMEM}


class UnsafeEntry(Exception):
    def __init__(self, entry: str, why: str) -> None:
        super().__init__(f"unsafe entry {entry!r}: {why}")


def extract_archive(archive: Path, extract_root: Path, max_size: int | None = None) -> Path:
    """Extract a .mar (zip) or tar(.gz) into a new directory under extract_root; return it.
    ``max_size``: max_unpacked_archive_size (None: what leaves 1 GiB free there)."""
    kind = _archive_kind(archive)
    extract_root.mkdir(parents=True, exist_ok=True)
    counter = Counter(size_limit(max_size, extract_root))
    dest = Path(tempfile.mkdtemp(dir=extract_root, prefix=_stem(archive.name)[:60] + "-"))
    try:
        if kind == "zip":
            _extract_zip(archive, dest, counter)
        else:
            _extract_tar(archive, dest, counter)
        _check_symlinks(dest)
    except BaseException as exc:
        shutil.rmtree(dest, ignore_errors=True)
        _raise_extraction_error(archive, exc)
        raise
    return dest


def _raise_extraction_error(archive: Path, exc: BaseException) -> None:
    """Turn an extraction failure into the error the client sees (or return to re-raise it)."""
    if isinstance(exc, TooLarge):
        raise InvalidModel(f"Model archive {archive.name} unpacks to {exc}") from exc
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
    for suffix in ARCHIVE_SUFFIXES:
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


def _write_file(target: Path, data: IO[bytes], executable: bool, counter: Counter) -> None:
    """Copy ``data`` to a new file, counting every byte against the archive's limit."""
    mode = 0o755 if executable else 0o644
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as out:
        while block := data.read(1 << 20):
            counter.add(len(block))
            out.write(block)


def _check_declared(sizes: list[int], limit: SizeLimit) -> None:
    """The sizes an archive's headers declare, before anything is written."""
    limit.check(sum(sizes))


def _make_dir(target: Path) -> None:
    if not target.is_dir():
        os.mkdir(target)


def _extract_zip(archive: Path, dest: Path, counter: Counter) -> None:
    with zipfile.ZipFile(archive) as zf:
        _check_declared([info.file_size for info in zf.infolist()], counter.limit)
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
                _write_file(target, data, bool(unix_mode & 0o100), counter)


def _tar_top_folder(names: list[str]) -> str | None:
    """The one top folder every entry sits in (torch-model-archiver's tgz has one), if any."""
    tops = {parts[0] for parts in (_entry_parts(n) for n in names) if parts}
    deeper = any(len(_entry_parts(n)) > 1 for n in names)
    if len(tops) == 1 and deeper:
        top = tops.pop()
        return None if top == "MAR-INF" else top
    return None


def _extract_tar(archive: Path, dest: Path, counter: Counter) -> None:
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        _check_declared([m.size for m in members if m.isreg()], counter.limit)
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
                source = tar.extractfile(member)
                assert source is not None   # None only for members that are not files
                _write_file(target, source, bool(member.mode & 0o100), counter)
            elif member.issym():
                _make_symlink(target, parts, member)
            else:
                _copy_hardlink(dest, target, member, strip, counter)
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


def _copy_hardlink(dest: Path, target: Path, member: tarfile.TarInfo, strip: str | None,
                   counter: Counter) -> None:
    """Hard links become copies of a regular file already extracted from this archive (each
    copy counts: a thousand links to one big file would be a thousand copies)."""
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
    counter.add(os.stat(source).st_size)
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
