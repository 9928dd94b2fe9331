"""daemon/ops/preflight.py: what fails a start before anything binds or loads."""
from __future__ import annotations

import tempfile
from pathlib import Path

from daemon.config.settings import load_config
from daemon.ops.preflight import start_problem
from tests.support.tls import self_signed


def problem(tmp_path: Path, **cli: object) -> str | None:
    return start_problem(load_config({k: str(v) for k, v in cli.items()}, {}, tmp_path))


def test_the_stores_must_be_directories(tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "a-file").write_text("")
    assert problem(tmp_path, model_store=tmp_path / "store") is None
    assert problem(tmp_path, model_store=tmp_path / "nope") == (
        f"the model store {tmp_path / 'nope'} is not a directory: create it, or name another")
    assert problem(tmp_path, model_store=tmp_path / "store",
                   workflow_store=tmp_path / "a-file") == (
        f"the workflow store {tmp_path / 'a-file'} is not a directory: create it, or name "
        "another")
    assert problem(tmp_path) is None   # no model store: registrations by URL only


def test_tls_files_must_make_a_server_context_for_grpc_too(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cert, key = self_signed(tmp_path / "a")
    _, other_key = self_signed(tmp_path / "b")
    assert problem(tmp_path, enable_grpc_ssl="true", certificate_file=cert,
                   private_key_file=key) is None
    refused = problem(tmp_path, enable_grpc_ssl="true", certificate_file=cert,
                      private_key_file=other_key)
    assert refused is not None and "KEY_VALUES_MISMATCH" in refused
    (tmp_path / "garbage.pem").write_text("not a key")
    assert "cannot serve TLS" in (problem(tmp_path, enable_grpc_ssl="true",
                                          certificate_file=cert,
                                          private_key_file=tmp_path / "garbage.pem") or "")
    # no TLS listener: the files are not read
    assert problem(tmp_path, certificate_file=cert, private_key_file=other_key) is None


def test_a_temporary_directory_too_deep_for_unix_sockets(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", "/tmp")
    assert problem(tmp_path) is None
    deep = "/tmp/" + "d" * 70
    monkeypatch.setattr(tempfile, "tempdir", deep)
    found = problem(tmp_path)
    assert found is not None and found.startswith(
        f"the temporary directory {deep} is too long for the workers' Unix socket paths (")
    assert found.endswith("at most 107): set TMPDIR to a shorter directory")
