"""daemon/models/archives.py on hand-made malicious archives: zip slip, absolute paths, symlinks,
hard links and device files are refused with nothing left behind; links inside are kept."""
from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from daemon.errors import InvalidModel
from tests.daemon.models.archive_helpers import (
    assert_unsafe,
    leftovers,
    manifest_bytes,
    prepare,
    refused,
    tar_file,
    tar_link,
    write_tgz,
    write_zip,
)


# ------------------------------------------------------------------- malicious archives

def test_zip_slip_refused(model_store, extract_root, tmp_path):
    write_zip(model_store / "slip.mar", [("MAR-INF/MANIFEST.json", manifest_bytes()),
                                         ("../../evil.txt", b"pwned")])
    assert_unsafe(refused("slip.mar", model_store, extract_root), "../../evil.txt", extract_root)
    assert not (tmp_path / "evil.txt").exists()
    assert not list(tmp_path.rglob("evil.txt"))


def test_zip_absolute_path_refused(model_store, extract_root, tmp_path):
    target = tmp_path / "outside" / "abs-evil.txt"
    write_zip(model_store / "abs.mar", [("MAR-INF/MANIFEST.json", manifest_bytes()),
                                        (str(target), b"pwned")])
    assert_unsafe(refused("abs.mar", model_store, extract_root), str(target), extract_root)
    assert not target.exists()


def test_zip_symlink_entry_refused(model_store, extract_root):
    link = zipfile.ZipInfo("etc-link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    write_zip(model_store / "link.mar", [("MAR-INF/MANIFEST.json", manifest_bytes()), link])
    assert_unsafe(refused("link.mar", model_store, extract_root), "etc-link", extract_root)


def test_tar_dotdot_refused(model_store, extract_root, tmp_path):
    write_tgz(model_store / "slip.tar.gz", [tar_file("m/MAR-INF/MANIFEST.json", manifest_bytes()),
                                            tar_file("m/../../../evil.txt", b"pwned")])
    err = refused("slip.tar.gz", model_store, extract_root)
    assert_unsafe(err, "m/../../../evil.txt", extract_root)
    assert not list(tmp_path.rglob("evil.txt"))


def test_tar_absolute_path_refused(model_store, extract_root, tmp_path):
    target = tmp_path / "abs-evil.txt"
    write_tgz(model_store / "abs.tgz", [tar_file("m/MAR-INF/MANIFEST.json", manifest_bytes()),
                                        tar_file(str(target), b"pwned")])
    assert_unsafe(refused("abs.tgz", model_store, extract_root), str(target), extract_root)
    assert not target.exists()


@pytest.mark.parametrize("outside", ["/etc", "tmp-outside"])
def test_tar_symlink_out_and_write_through_refused(outside, model_store, extract_root,
                                                   tmp_path):
    target = outside if outside.startswith("/") else str(tmp_path / outside)
    Path(target).mkdir(exist_ok=True)
    write_tgz(model_store / "sym.tgz", [tar_file("m/MAR-INF/MANIFEST.json", manifest_bytes()),
                                        tar_link("m/escape", target),
                                        tar_file("m/escape/torchd-test-evil.txt", b"pwned")])
    assert_unsafe(refused("sym.tgz", model_store, extract_root), "m/escape", extract_root)
    assert not (Path(target) / "torchd-test-evil.txt").exists()


def test_tar_relative_symlink_out_refused(model_store, extract_root, tmp_path):
    write_tgz(model_store / "rel.tgz", [tar_file("m/MAR-INF/MANIFEST.json", manifest_bytes()),
                                        tar_link("m/up", "../../.."),
                                        tar_file("m/up/evil.txt", b"pwned")])
    assert_unsafe(refused("rel.tgz", model_store, extract_root), "m/up", extract_root)
    assert not list(tmp_path.rglob("evil.txt"))


def test_tar_symlink_chain_out_refused(model_store, extract_root):
    # Each link looks inside on its own ("b/.." is ".", "b" is "."), together they escape.
    write_tgz(model_store / "chain.tgz", [tar_file("m/MAR-INF/MANIFEST.json", manifest_bytes()),
                                          tar_link("m/a", "b/.."), tar_link("m/b", ".")])
    err = refused("chain.tgz", model_store, extract_root)
    assert isinstance(err, InvalidModel) and "unsafe entry 'a'" in err.message
    assert leftovers(extract_root) == []


def test_tar_write_through_inside_symlink_refused(model_store, extract_root):
    write_tgz(model_store / "through.tgz", [
        tar_file("m/MAR-INF/MANIFEST.json", manifest_bytes()),
        tar_link("m/alias", "MAR-INF"),
        tar_file("m/alias/MANIFEST.json", b"{}")])
    err = refused("through.tgz", model_store, extract_root)
    assert_unsafe(err, "m/alias/MANIFEST.json", extract_root)


@pytest.mark.parametrize("link", ["/etc/passwd", "m/../../outside.txt", "outside.txt"])
def test_tar_hardlink_outside_refused(link, model_store, extract_root, tmp_path):
    (tmp_path / "outside.txt").write_text("secret")
    write_tgz(model_store / "hard.tgz", [tar_file("m/MAR-INF/MANIFEST.json", manifest_bytes()),
                                         tar_link("m/stolen", link, tarfile.LNKTYPE)])
    assert_unsafe(refused("hard.tgz", model_store, extract_root), "m/stolen", extract_root)


def test_tar_device_file_refused(model_store, extract_root):
    dev = tarfile.TarInfo("m/null")
    dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 3
    fifo = tarfile.TarInfo("m/pipe")
    fifo.type = tarfile.FIFOTYPE
    for name, member in (("dev.tgz", dev), ("fifo.tgz", fifo)):
        write_tgz(model_store / name, [tar_file("m/MAR-INF/MANIFEST.json", manifest_bytes()),
                                       (member, None)])
        assert_unsafe(refused(name, model_store, extract_root), member.name, extract_root)


def test_tar_links_inside_are_kept(model_store, extract_root):
    write_tgz(model_store / "ok.tgz", [
        tar_file("m/MAR-INF/MANIFEST.json", manifest_bytes()),
        tar_file("m/weights/w.bin", b"weights"),
        tar_link("m/w.bin", "weights/w.bin"),
        tar_link("m/copy.bin", "m/weights/w.bin", tarfile.LNKTYPE)])
    prepared = prepare("ok.tgz", model_store, extract_root)
    assert (prepared.model_dir / "w.bin").is_symlink()
    assert (prepared.model_dir / "w.bin").read_bytes() == b"weights"
    copy = prepared.model_dir / "copy.bin"
    assert copy.read_bytes() == b"weights" and not copy.is_symlink()
    assert os.stat(copy).st_nlink == 1, "hard links are copied, never linked"


def test_tar_without_top_folder_is_not_stripped(model_store, extract_root):
    write_tgz(model_store / "flat.tgz", [tar_file("MAR-INF/MANIFEST.json", manifest_bytes()),
                                         tar_file("./handler.py", b"")])
    prepared = prepare("flat.tgz", model_store, extract_root)
    assert (prepared.model_dir / "handler.py").is_file()
