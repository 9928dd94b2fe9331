"""max_unpacked_archive_size (daemon/models/size_limits.py): archives that unpack, and downloads
that hold, more than the limit are refused with a 400 naming it, before anything is written
where the archive declares it, while writing where it does not; nothing is left behind."""
from __future__ import annotations

import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from daemon.errors import DownloadArchiveError, InvalidModel
from daemon.models.size_limits import KEEP_FREE, SizeLimit, TooLarge, size_limit
from tests.daemon.models.archive_helpers import (leftovers, manifest_bytes, prepare, refused,
                                                 tar_file, write_tgz)
from tests.daemon.models.test_downloads import body, failure, server  # noqa: F401

LIMIT = 1 << 20      # 1 MiB
BOMB = 16 << 20      # what the small archives below unpack to
NAMED = f"max_unpacked_archive_size ({LIMIT} bytes)"


def deflated_zip(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def assert_too_large(err: Exception, extract_root: Path) -> None:
    assert isinstance(err, InvalidModel) and err.status == 400, err
    assert NAMED in err.message, err.message
    assert leftovers(extract_root) == []


def test_a_zip_bomb_is_refused_before_a_byte_is_written(model_store, extract_root):
    archive = deflated_zip(model_store / "bomb.mar", [
        ("MAR-INF/MANIFEST.json", manifest_bytes()), ("zeros.bin", bytes(BOMB))])
    assert archive.stat().st_size < 64 << 10
    err = refused("bomb.mar", model_store, extract_root, max_size=LIMIT)
    assert_too_large(err, extract_root)
    assert err.message.startswith("Model archive bomb.mar unpacks to more than")


def test_a_tar_gz_bomb_is_refused(model_store, extract_root):
    write_tgz(model_store / "bomb.tar.gz", [tar_file("m/MAR-INF/MANIFEST.json", manifest_bytes()),
                                            tar_file("m/zeros.bin", bytes(BOMB))])
    assert_too_large(refused("bomb.tar.gz", model_store, extract_root, max_size=LIMIT),
                     extract_root)


def test_bytes_written_count_where_headers_declare_nothing(model_store, extract_root):
    """Hard links declare no size; each becomes a copy of its target, and the copies count."""
    big = bytes(LIMIT // 2 + 1)
    links = []
    for n in range(3):
        info = tarfile.TarInfo(f"m/copy{n}.bin")
        info.type, info.linkname = tarfile.LNKTYPE, "m/big.bin"
        links.append((info, None))
    write_tgz(model_store / "links.tar.gz", [tar_file("m/MAR-INF/MANIFEST.json",
                                                      manifest_bytes()),
                                             tar_file("m/big.bin", big), *links])
    with tarfile.open(model_store / "links.tar.gz") as tar:   # declared: under the limit
        assert sum(m.size for m in tar.getmembers()) < LIMIT
    assert_too_large(refused("links.tar.gz", model_store, extract_root, max_size=LIMIT),
                     extract_root)


def test_an_archive_within_the_limit_unpacks(model_store, extract_root):
    deflated_zip(model_store / "fine.mar", [("MAR-INF/MANIFEST.json", manifest_bytes()),
                                            ("zeros.bin", bytes(LIMIT // 2))])
    prepared = prepare("fine.mar", model_store, extract_root, max_size=LIMIT)
    assert (prepared.model_dir / "zeros.bin").stat().st_size == LIMIT // 2


def test_unset_the_limit_keeps_a_gib_free(tmp_path):
    limit = size_limit(None, tmp_path / "not" / "made" / "yet")
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    assert abs(limit.limit - max(0, free - KEEP_FREE)) < 64 << 20   # others write meanwhile
    assert "leave 1 GiB free" in limit.rule and "max_unpacked_archive_size is unset" in \
        limit.rule
    with pytest.raises(TooLarge, match="leave 1 GiB free"):
        SizeLimit(0, limit.rule).check(1)


# ------------------------------------------------------------------------------ downloads

def test_a_download_declaring_too_much_is_refused_before_its_body(server, model_store,  # noqa: F811
                                                                  extract_root):
    server.routes["/big.mar"] = body(b"x" * 100, declared=LIMIT + 1, stall_after=0)
    url = server.url("/big.mar")
    err = failure(url, model_store, extract_root, max_size=LIMIT)
    assert isinstance(err, DownloadArchiveError) and err.status == 400
    assert err.message == (f"Failed to download archive from: {url}: the archive is more "
                           f"than {NAMED}")
    assert os.listdir(model_store) == [], "no partial download may be left"


def test_a_download_counts_the_bytes_it_reads(server, model_store, extract_root):  # noqa: F811
    def unannounced(h) -> None:   # no Content-Length: the body ends with the connection
        h.send_response(200)
        h.end_headers()
        h.wfile.write(bytes(LIMIT + 4096))
        h.close_connection = True
    server.routes["/endless.mar"] = unannounced
    err = failure(server.url("/endless.mar"), model_store, extract_root, max_size=LIMIT)
    assert isinstance(err, DownloadArchiveError) and NAMED in err.message
    assert os.listdir(model_store) == []


def test_a_download_within_the_limit_still_unpacks_within_it(server, model_store,  # noqa: F811
                                                             extract_root, tmp_path):
    bomb = deflated_zip(tmp_path / "bomb.mar", [("MAR-INF/MANIFEST.json", manifest_bytes()),
                                                ("zeros.bin", bytes(BOMB))])
    server.routes["/bomb.mar"] = body(bomb.read_bytes())
    err = failure(server.url("/bomb.mar"), model_store, extract_root, max_size=LIMIT)
    assert_too_large(err, extract_root)
    assert os.listdir(model_store) == [], "the download goes with the refused archive"
