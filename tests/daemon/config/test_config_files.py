"""daemon/config/files.py: a torchd snapshot named as the config file (TorchServe's
``--ts-config <snapshot>``) is restored, and the config file it recorded is read instead."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.config.files import snapshot_document
from daemon.config.settings import ConfigError, load_config


def write_snapshot(path: Path, **extra: object) -> Path:
    path.write_text(json.dumps({"version": 1, "models": {}, **extra}, indent=1))
    return path


def test_a_snapshot_is_json_with_models_and_a_properties_file_never_is():
    assert snapshot_document(' \n{"models": {}, "version": 1}') == {"models": {}, "version": 1}
    for text in ("inference_address=http://127.0.0.1:9", "{models}", '{"version": 1}',
                 "[1]", "", "{" * 100000):
        assert snapshot_document(text) is None, text[:40]


def test_snapshot_as_ts_config_reads_the_config_file_it_recorded(tmp_path):
    recorded = tmp_path / "site.properties"
    recorded.write_text("default_response_timeout=77\n")
    snapshot = write_snapshot(tmp_path / "20261207000000000000-000000-snapshot.cfg",
                              configFile=str(recorded))
    config = load_config({"ts_config": str(snapshot), "ncs": True}, {}, tmp_path)
    assert (config.restore_snapshot, config.config_file) == (snapshot, recorded)
    assert config.default_response_timeout == 77
    assert config.ncs and not config.snapshots_written


def test_snapshot_without_a_recorded_config_file_uses_defaults(tmp_path):
    (tmp_path / "config.properties").write_text("default_response_timeout=77\n")
    snapshot = write_snapshot(tmp_path / "s.cfg")
    config = load_config({}, {"TS_CONFIG_FILE": str(snapshot)}, tmp_path)
    assert (config.restore_snapshot, config.config_file) == (snapshot, None)
    assert config.default_response_timeout == 120   # ./config.properties is not read either


def test_snapshot_whose_config_file_is_gone_stops_the_start(tmp_path):
    snapshot = write_snapshot(tmp_path / "s.cfg", configFile=str(tmp_path / "gone.properties"))
    with pytest.raises(ConfigError, match="torchd snapshot whose config file .*gone.properties "
                                          "is gone"):
        load_config({"ts_config": str(snapshot)}, {}, tmp_path)


def test_a_properties_file_is_read_as_before(tmp_path):
    (tmp_path / "config.properties").write_text("default_response_timeout=77\n")
    config = load_config({}, {}, tmp_path)
    assert (config.restore_snapshot, config.config_file) == (None, tmp_path / "config.properties")
    assert config.snapshots_written and config.default_response_timeout == 77


def test_a_damaged_snapshot_named_as_config_stops_the_start(tmp_path):
    # Read as properties, it would start from the newest snapshot instead: the wrong state.
    damaged = tmp_path / "20261207000000000000-000000-shutdown.cfg"
    damaged.write_text('{"models": {"noop": ')
    with pytest.raises(ConfigError, match="is no torchd snapshot"):
        load_config({"ts_config": str(damaged)}, {}, tmp_path)


def test_a_torchserve_snapshot_named_as_config_is_read_without_warnings(tmp_path, caplog):
    """TorchServe's documented way back to a known state: its snapshot (properties) as the
    config file. Its bookkeeping keys (tsConfigFile, version) are not warned about."""
    snapshot = tmp_path / "20240208043452822-snapshot.cfg"
    snapshot.write_text("#Saving snapshot\n"
                        "model_snapshot={\"name\"\\: \"s\", \"modelCount\"\\: 0, "
                        "\"models\"\\: {}}\n"
                        "tsConfigFile=logs/config/20240208043104864-startup.cfg\n"
                        "version=0.12.0\ndefault_response_timeout=77\n")
    with caplog.at_level("WARNING"):
        config = load_config({"ts_config": str(snapshot)}, {}, tmp_path)
    assert config.config_file == snapshot and config.default_response_timeout == 77
    assert config.model_snapshot is not None and "modelCount" in config.model_snapshot
    assert [r.getMessage() for r in caplog.records] == []
