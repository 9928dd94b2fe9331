"""daemon/models/archives.py on real archives: torch-model-archiver's three formats and the URL
checks of SPEC 1.1 (errors 3, 4, 5, 8). Hand-made malicious archives are in
test_archives_malicious.py, broken manifests and YAML (error 9) in test_archives_broken.py."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from daemon.models.archives import remove_prepared
from tests.daemon.conftest import BASIC_FILES, BASIC_VERSION
from tests.daemon.models.archive_helpers import leftovers, prepare, refused


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


@pytest.mark.parametrize("fmt", ["default", "no-archive"])
def test_absolute_path_of_a_store_entry_is_that_entry(fmt, store_copy, model_store,
                                                      extract_root, basic_archives):
    # TorchServe's stateful examples register url=<model_store>/<name>: the same entry as
    # <name>. The same name anywhere else is still refused: only the store is read.
    name = store_copy(fmt)
    prepared = prepare(str(model_store / name), model_store, extract_root)
    assert prepared.source == model_store / name
    assert prepared.manifest["model"]["modelName"] == "basic"
    remove_prepared(prepared)
    elsewhere = basic_archives[fmt]
    assert elsewhere.parent != model_store
    for url in (str(elsewhere), f"{model_store}/sub/{name}", f"{model_store}/missing.mar"):
        err = refused(url, model_store, extract_root)
        assert (err.status, err.message) == (404, f"Model not found at: {url}")
    assert leftovers(extract_root) == []
