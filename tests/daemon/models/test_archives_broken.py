"""daemon/models/archives.py on broken archives (SPEC 1.1, error 9): not an archive, truncated,
bad manifests and bad YAML config files; and the errors' TorchServe types."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from daemon.errors import InvalidModel, ModelNotFound
from tests.support.daemon import REPO
from tests.daemon.models.archive_helpers import (
    leftovers,
    manifest_bytes,
    prepare,
    refused,
    write_zip,
)

# Six levels of ten aliases each: 10**6 values once expanded, from a 300-byte file.
ALIAS_BOMB = "\n".join(
    [f"l0: &l0 [{','.join(['x'] * 10)}]"]
    + [f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 6)]).encode()


# ------------------------------------------------------------------ broken archives

EXTRACT_UNDER_A_SIZE_LIMIT = textwrap.dedent("""
    import resource, sys
    from pathlib import Path
    from tests.daemon.models.archive_helpers import prepare
    from daemon.errors import TorchdError
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
    try:
        prepare(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
    except TorchdError as exc:
        print(exc.status, exc.type, exc.message)
""")


def test_a_host_that_takes_no_more_is_the_servers_fault_not_the_archives(model_store,
                                                                         extract_root):
    """A file that the host will not let grow (the file size limit's EFBIG here, a full disk's
    ENOSPC elsewhere) fails the extraction as the server's 500, not a corrupt archive's 400;
    nothing is left behind."""
    write_zip(model_store / "big.mar", [("MAR-INF/MANIFEST.json", manifest_bytes()),
                                        ("weights.bin", os.urandom(256 * 1024))])
    child = subprocess.run(
        [sys.executable, "-c", EXTRACT_UNDER_A_SIZE_LIMIT, "big.mar", str(model_store),
         str(extract_root)], capture_output=True, text=True, timeout=60, check=False,
        cwd=REPO)
    assert child.stdout.strip() == ("500 InternalServerException Failed to extract model "
                                    "archive big.mar: File too large"), child.stderr
    assert leftovers(extract_root) == []


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
