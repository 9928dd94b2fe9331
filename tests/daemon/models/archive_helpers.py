"""Helpers of the archive tests (tests/daemon/models/test_archives*.py): prepare_archive with the
default allowed URLs, refusals, and hand-made zip and tar.gz archives with a manifest."""
from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from daemon.config.declarations import DEFAULT_ALLOWED_URLS
from daemon.models.archives import PreparedArchive, prepare_archive
from daemon.errors import InvalidModel, TorchdError

MANIFEST = {"runtime": "python", "archiverVersion": "0.12.0", "createdOn": "01/01/2026 00:00:00",
            "model": {"modelName": "evil", "modelVersion": "1.0", "handler": "handler.py"}}


def prepare(url: str, store: Path, extract_root: Path, **kwargs) -> PreparedArchive:
    kwargs.setdefault("allowed_urls", list(DEFAULT_ALLOWED_URLS))
    return prepare_archive(url, model_store=store, extract_root=extract_root, **kwargs)


def refused(url: str, store: Path, extract_root: Path, **kwargs) -> TorchdError:
    with pytest.raises(TorchdError) as info:
        prepare(url, store, extract_root, **kwargs)
    return info.value


def leftovers(extract_root: Path) -> list[str]:
    return sorted(os.listdir(extract_root)) if extract_root.exists() else []


def manifest_bytes(**model) -> bytes:
    return json.dumps({**MANIFEST, "model": {**MANIFEST["model"], **model}}).encode()


def write_zip(path: Path, entries: list[tuple[str, bytes] | zipfile.ZipInfo]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for entry in entries:
            if isinstance(entry, zipfile.ZipInfo):
                zf.writestr(entry, b"")
            else:
                zf.writestr(*entry)
    return path


def tar_file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def tar_link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def write_tgz(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def assert_unsafe(err: TorchdError, entry: str, extract_root: Path) -> None:
    assert isinstance(err, InvalidModel) and err.status == 400
    assert "unsafe entry" in err.message and repr(entry) in err.message, err.message
    assert leftovers(extract_root) == []
