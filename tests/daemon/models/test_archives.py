"""daemon/models/archives.py on real archives: torch-model-archiver's three formats, hand-made
malicious ones, broken manifests and YAML, and the URL checks of SPEC 1.1 (errors 3, 4, 5, 8, 9)."""
from __future__ import annotations

import io
import json
import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

from daemon.config.declarations import DEFAULT_ALLOWED_URLS
from daemon.models.archives import PreparedArchive, prepare_archive, remove_prepared
from daemon.errors import InvalidModel, ModelNotFound, TorchdError
from tests.daemon.conftest import BASIC_FILES, BASIC_VERSION

# Six levels of ten aliases each: 10**6 values once expanded, from a 300-byte file.
ALIAS_BOMB = "\n".join(
    [f"l0: &l0 [{','.join(['x'] * 10)}]"]
    + [f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 6)]).encode()
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


# ------------------------------------------------------------------- real archiver output

@pytest.mark.parametrize("fmt", ["default", "tgz", "no-archive"])
def test_archiver_formats_prepare(fmt, store_copy, model_store, extract_root):
    name = store_copy(fmt)
    prepared = prepare(name, model_store, extract_root)

    assert prepared.source == model_store / name and not prepared.downloaded
    model = prepared.manifest["model"]
    assert model["modelName"] == "basic" and model["modelVersion"] == BASIC_VERSION
    assert model["handler"] == "handler.py" and model["serializedFile"] == "weights.bin"
    assert model["configFile"] == "model-config.yaml"
    assert model["requirementsFile"] == "requirements.txt"
    assert prepared.manifest["runtime"] == "python"
    source_yaml = Path(__file__).parents[2] / "models/archive_basic/model-config.yaml"
    assert prepared.model_yaml_config == yaml.safe_load(source_yaml.read_text())
    assert prepared.model_yaml_config["handler"]["labels"] == "labels.json"
    for rel in BASIC_FILES:
        assert (prepared.model_dir / rel).is_file(), rel
    assert (prepared.model_dir / "labels.json").read_text().startswith('{"0": "zero"')

    if fmt == "no-archive":
        assert prepared.model_dir == prepared.source and not prepared.extracted
        assert leftovers(extract_root) == []
    else:
        assert prepared.model_dir.parent == extract_root and prepared.extracted
    remove_prepared(prepared)
    assert leftovers(extract_root) == []
    assert (model_store / name).exists(), "a model-store archive is never deleted"


def test_each_prepare_extracts_into_a_new_directory(store_copy, model_store, extract_root):
    name = store_copy("default")
    first = prepare(name, model_store, extract_root)
    second = prepare(name, model_store, extract_root)
    assert first.model_dir != second.model_dir
    remove_prepared(first)
    assert (second.model_dir / "handler.py").is_file()


def test_archive_kind_is_sniffed_not_taken_from_the_name(store_copy, model_store, extract_root):
    zip_named_odd = store_copy("default", name="basic.bin")
    tgz_named_mar = store_copy("tgz", name="basic-tgz.mar")
    for name in (zip_named_odd, tgz_named_mar):
        assert prepare(name, model_store, extract_root).manifest["model"]["modelName"] == "basic"


def test_file_url_is_used_in_place(basic_archives, tmp_path, model_store, extract_root):
    mar = basic_archives["default"]
    url = mar.as_uri()
    prepared = prepare(url, model_store, extract_root, allowed_urls=["file://.*"])
    assert prepared.source == mar and not prepared.downloaded
    assert os.listdir(model_store) == []
    no_archive = basic_archives["no-archive"]
    in_place = prepare(no_archive.as_uri(), model_store, extract_root, allowed_urls=["file://.*"])
    assert in_place.model_dir == no_archive
    remove_prepared(prepared)
    remove_prepared(in_place)
    assert mar.is_file() and no_archive.is_dir()


def test_file_url_needs_allowed_urls(basic_archives, model_store, extract_root):
    url = basic_archives["default"].as_uri()
    err = refused(url, model_store, extract_root)
    assert (err.status, err.message) == (404, f"Given URL {url} does not match any allowed URL(s)")


def test_file_url_to_missing_file_and_encoded_dots(tmp_path, model_store, extract_root):
    allowed = ["file://.*"]
    url = (tmp_path / "nope.mar").as_uri()
    assert refused(url, model_store, extract_root, allowed_urls=allowed).message == \
        f"Model not found at: {url}"
    sneaky = f"file://{tmp_path}/store/%2e%2e/nope.mar"
    err = refused(sneaky, model_store, extract_root, allowed_urls=allowed)
    assert err.message == f"Relative path is not allowed in url: {sneaky}"


# ------------------------------------------------------------------------- URL checks

def test_url_errors_in_torchserve_order(model_store, extract_root):
    cases = {
        "": "empty url",
        "../basic.mar": "Relative path is not allowed in url: ../basic.mar",
        # ".." wins over allowed_urls, as in TorchServe
        "http://example.invalid/../x.mar":
            "Relative path is not allowed in url: http://example.invalid/../x.mar",
        "http://example.invalid/x.mar":
            "Given URL http://example.invalid/x.mar does not match any allowed URL(s)",
        "S3://bucket/x.mar": "Given URL S3://bucket/x.mar does not match any allowed URL(s)",
        "missing.mar": "Model not found at: missing.mar",
    }
    for url, message in cases.items():
        err = refused(url, model_store, extract_root)
        assert (err.status, err.type, err.message) == (404, "ModelNotFoundException", message)


def test_allowed_urls_match_whole_url_ignoring_case(model_store, extract_root):
    # "https://good" must not allow "https://good.evil/...": a full match is required.
    url = "https://good.evil.invalid/x.mar"
    err = refused(url, model_store, extract_root, allowed_urls=["https://good", "[invalid"])
    assert err.message == f"Given URL {url} does not match any allowed URL(s)"


def test_plain_names_only_directly_in_the_store(store_copy, model_store, extract_root, tmp_path):
    name = store_copy("default")
    (model_store / "sub").mkdir()
    shutil.move(model_store / name, model_store / "sub" / name)
    os.mkfifo(model_store / "fifo.mar")
    for name in ("sub/basic.mar", "/etc/passwd", ".", "fifo.mar", "nul\x00.mar"):
        err = refused(name, model_store, extract_root)
        assert (err.status, err.message) == (404, f"Model not found at: {name}")
    assert leftovers(extract_root) == []


# ------------------------------------------------------------------- malicious archives

def assert_unsafe(err: TorchdError, entry: str, extract_root: Path) -> None:
    assert isinstance(err, InvalidModel) and err.status == 400
    assert "unsafe entry" in err.message and repr(entry) in err.message, err.message
    assert leftovers(extract_root) == []


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


# ------------------------------------------------------------------ broken archives

def test_not_an_archive(model_store, extract_root):
    (model_store / "text.mar").write_text("hello")
    err = refused("text.mar", model_store, extract_root)
    assert isinstance(err, InvalidModel) and "neither" in err.message


def test_truncated_zip(store_copy, model_store, extract_root):
    name = store_copy("default")
    data = (model_store / name).read_bytes()
    (model_store / name).write_bytes(data[: len(data) // 2])
    err = refused(name, model_store, extract_root)
    assert isinstance(err, InvalidModel) and "corrupt" in err.message
    assert leftovers(extract_root) == []


def test_truncated_tgz(store_copy, model_store, extract_root):
    name = store_copy("tgz")
    data = (model_store / name).read_bytes()
    (model_store / name).write_bytes(data[: len(data) - 20])
    err = refused(name, model_store, extract_root)
    assert isinstance(err, InvalidModel) and leftovers(extract_root) == []


@pytest.mark.parametrize("manifest, words", [
    (None, "has no MAR-INF/MANIFEST.json"),
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[1, 2]", 'no "model" object'),
    (b'{"runtime": "python"}', 'no "model" object'),
    (b'{"model": {"handler": 3}}', "model.handler must be a string"),
    (b'{"model": {"modelVersion": ["1"]}}', "model.modelVersion must be a string"),
    (b'{"model": {}, "runtime": 1}', "runtime must be a string"),
])
def test_bad_manifest(manifest, words, model_store, extract_root):
    entries = [("handler.py", b"")]
    if manifest is not None:
        entries.append(("MAR-INF/MANIFEST.json", manifest))
    write_zip(model_store / "bad.mar", entries)
    err = refused("bad.mar", model_store, extract_root)
    assert isinstance(err, InvalidModel) and err.status == 400
    assert words in err.message, err.message
    assert leftovers(extract_root) == []


def test_bad_manifest_in_directory_is_left_alone(model_store, extract_root):
    folder = model_store / "folder"
    (folder / "MAR-INF").mkdir(parents=True)
    (folder / "MAR-INF" / "MANIFEST.json").write_text("nope")
    err = refused("folder", model_store, extract_root)
    assert isinstance(err, InvalidModel)
    assert (folder / "MAR-INF" / "MANIFEST.json").exists()


def test_manifest_defaults(model_store, extract_root):
    write_zip(model_store / "d.mar", [
        ("MAR-INF/MANIFEST.json", b'{"model": {"modelName": "d", "handler": "h.py"}}')])
    prepared = prepare("d.mar", model_store, extract_root)
    assert prepared.manifest == {"runtime": "python", "model": {
        "modelName": "d", "handler": "h.py", "modelVersion": "1.0"}}
    write_zip(model_store / "n.mar", [
        ("MAR-INF/MANIFEST.json", b'{"model": {"modelName": "n", "modelVersion": 2.0}}')])
    assert prepare("n.mar", model_store, extract_root).manifest["model"]["modelVersion"] == "2.0"


@pytest.mark.parametrize("config, content, words", [
    ("missing.yaml", None, "is not in the archive"),
    ("../outside.yaml", None, "must be a path inside the archive"),
    ("/etc/hostname", None, "must be a path inside the archive"),
    ("c.yaml", b"a: [1, 2\n", "configFile c.yaml is not valid YAML"),
    ("c.yaml", b"- 1\n- 2\n", "configFile c.yaml must be a YAML mapping"),
    ("c.yaml", b"x: !!python/object/apply:os.system ['true']\n", "is not valid YAML"),
    ("c.yaml", ALIAS_BOMB, "too large"),
    ("c.yaml", b"a: &a [*a]\n", "too large"),
])
def test_bad_config_file(config, content, words, model_store, extract_root):
    entries = [("MAR-INF/MANIFEST.json", manifest_bytes(configFile=config))]
    if content is not None:
        entries.append((config, content))
    write_zip(model_store / "cfg.mar", entries)
    err = refused("cfg.mar", model_store, extract_root)
    assert isinstance(err, InvalidModel) and words in err.message, err.message
    assert leftovers(extract_root) == []


def test_config_file_values_become_plain(model_store, extract_root):
    config = b"when: 2026-01-02\nset: !!set {a: null}\nempty:\n"
    write_zip(model_store / "cfg.mar", [("MAR-INF/MANIFEST.json",
                                         manifest_bytes(configFile="c.yaml")), ("c.yaml", config)])
    prepared = prepare("cfg.mar", model_store, extract_root)
    assert prepared.model_yaml_config == {"when": "2026-01-02", "set": ["a"], "empty": None}
    write_zip(model_store / "empty.mar", [("MAR-INF/MANIFEST.json",
                                           manifest_bytes(configFile="e.yaml")), ("e.yaml", b"")])
    assert prepare("empty.mar", model_store, extract_root).model_yaml_config == {}


def test_errors_are_torchserve_types():
    assert ModelNotFound("x").to_json()["type"] == "ModelNotFoundException"
    assert InvalidModel("x").to_json() == {"code": 400, "type": "InvalidModelException",
                                           "message": "x"}
