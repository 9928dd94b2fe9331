"""Config: properties syntax, precedence, validation and the derived security defaults."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from daemon.config.declarations import DEFAULT_ALLOWED_URLS, SETTINGS, settings_table_markdown
from daemon.config.properties import parse_properties
from daemon.config.settings import ConfigError, load_config
from daemon.models.archives import startup_models_in_store
from daemon.osutil import usable_cpus
from daemon.config.values import BindAddress, StartupModel, parse_address, split_model_entry
from daemon.models.downloads import url_is_allowed


def load(tmp_path: Path, text: str | None = None, env: dict | None = None,
         **cli: object):
    if text is not None:
        (tmp_path / "config.properties").write_text(text)
    return load_config(cli, env or {}, tmp_path)


# --- properties syntax ----------------------------------------------------------------------

def test_separators_comments_and_whitespace():
    text = (
        "# a comment\n"
        "! another comment\n"
        "   \n"
        "a=1\n"
        "b : 2\n"
        "c 3\n"
        "  d   =   spaced value   \n"
        "e:\n"
        "f\n"
        "g=x=y:z\n"
        "h = # not a comment\n"
    )
    assert parse_properties(text) == {
        "a": "1", "b": "2", "c": "3", "d": "spaced value", "e": "", "f": "",
        "g": "x=y:z", "h": "# not a comment"}


def test_later_duplicates_win():
    assert parse_properties("job_queue_size=1\njob_queue_size=2\n") == {"job_queue_size": "2"}


def test_continuations_join_lines_and_drop_leading_blanks():
    text = (
        'models={\\\n'
        '  "noop": {\\\n'
        '    "1.0": {"minWorkers": 1}\\\n'
        '  }\\\n'
        '}\n'
        "after=ok\n"
    )
    assert parse_properties(text) == {
        "models": '{"noop": {"1.0": {"minWorkers": 1}}}', "after": "ok"}


def test_escaped_backslash_is_not_a_continuation_and_escapes_decode():
    text = "path=C:\\\\dir\\\\\nkey\\=with\\:seps = v\\u00e9\\tx\nnext=1\n"
    assert parse_properties(text) == {"path": "C:\\dir\\", "key=with:seps": "v\u00e9\tx",
                                      "next": "1"}


def test_continuation_at_end_of_file():
    assert parse_properties("a=1\\\n") == {"a": "1"}


def test_crlf_line_endings():
    assert parse_properties("a=1\r\nb=2\r\n") == {"a": "1", "b": "2"}


# --- defaults ---------------------------------------------------------------------------------

def test_startup_workers_follow_the_cpus_torchd_may_use(tmp_path, monkeypatch):
    """A 1-CPU container on a 64-core host starts 1 worker per startup model, not 64."""
    monkeypatch.setattr("daemon.config.settings.usable_cpus", lambda: 1)
    assert load(tmp_path).startup_workers_per_model(0) == 1
    monkeypatch.setattr("daemon.config.settings.usable_cpus", lambda: 3)
    assert load(tmp_path).startup_workers_per_model(0) == 3


def test_startup_workers_are_one_per_gpu_where_torchd_uses_gpus(tmp_path):
    """As TorchServe: a 16-core machine with one GPU starts one worker per startup model, not
    16 on that GPU; default_workers_per_model still wins."""
    assert load(tmp_path).startup_workers_per_model(1) == 1
    assert load(tmp_path).startup_workers_per_model(4) == 4
    assert load(tmp_path, default_workers_per_model="3").startup_workers_per_model(4) == 3


def test_zero_default_workers_means_choose_for_startup_models(tmp_path, monkeypatch):
    """TorchServe reads default_workers_per_model=0 as unset for the models it loads at start
    (ConfigManager.getDefaultWorkers); a register call still gets 0 workers from it."""
    monkeypatch.setattr("daemon.config.settings.usable_cpus", lambda: 3)
    config = load(tmp_path, default_workers_per_model="0")
    assert config.startup_workers_per_model(0) == 3
    assert config.startup_workers_per_model(2) == 2
    assert config.register_workers_default == 0


def test_defaults(tmp_path):
    config = load(tmp_path)
    assert config.inference_address == BindAddress("http", "127.0.0.1", 8080)
    assert config.management_address.url == "http://127.0.0.1:8081"
    assert config.metrics_address.port == 8082
    assert config.model_store is None
    assert config.load_models == () and config.startup_models == ()
    assert config.default_workers_per_model is None
    assert config.startup_workers_per_model(0) == usable_cpus()
    assert config.register_workers_default == 0
    assert (config.job_queue_size, config.max_request_size, config.max_response_size) == (
        100, 6553500, 6553500)
    assert (config.default_response_timeout, config.default_startup_timeout,
            config.unregister_model_timeout) == (120, 120, 120)
    assert config.max_workers == 64
    assert config.install_py_dep_per_model is False
    assert config.models == {}
    assert config.log_location == tmp_path.resolve() / "logs"
    assert config.snapshot_dir == tmp_path.resolve() / "logs" / "config"
    assert config.pid_file == tmp_path.resolve() / "logs" / "torchd.pid"
    assert config.key_file == tmp_path.resolve() / "key_file.json"
    assert config.worker_spawn == "zygote"
    assert config.ncs is False
    assert config.config_file is None
    assert config.notify_socket is None and config.watchdog_usec is None
    assert config.effective_allowed_urls == DEFAULT_ALLOWED_URLS


# --- finding the file, precedence -------------------------------------------------------------

def test_precedence_default_file_env_cli(tmp_path):
    text = "job_queue_size=10\nmax_workers=20\ndefault_response_timeout=30\nmodel_store=fs\n"
    env = {"TS_MAX_WORKERS": "21", "TS_DEFAULT_RESPONSE_TIMEOUT": "31"}
    config = load(tmp_path, text, env, default_response_timeout="32")
    assert config.job_queue_size == 10  # file over default
    assert config.max_workers == 21  # env over file
    assert config.default_response_timeout == 32  # CLI over env
    assert config.unregister_model_timeout == 120  # default
    assert config.model_store == tmp_path.resolve() / "fs"  # relative to cwd
    assert config.config_file == tmp_path.resolve() / "config.properties"
    assert config.sources["max_workers"] == "environment TS_MAX_WORKERS"
    assert config.sources["default_response_timeout"] == "command line"


def test_cli_none_means_not_given(tmp_path):
    config = load(tmp_path, "max_workers=7\n", max_workers=None)
    assert config.max_workers == 7


def test_ts_config_option_then_env_then_cwd(tmp_path):
    (tmp_path / "config.properties").write_text("max_workers=1\n")
    (tmp_path / "env.properties").write_text("max_workers=2\n")
    (tmp_path / "cli.properties").write_text("max_workers=3\n")
    env = {"TS_CONFIG_FILE": str(tmp_path / "env.properties")}
    assert load_config({}, {}, tmp_path).max_workers == 1
    assert load_config({}, env, tmp_path).max_workers == 2
    assert load_config({"ts_config": "cli.properties"}, env, tmp_path).max_workers == 3


def test_missing_explicit_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found.*nope.properties"):
        load_config({"ts_config": "nope.properties"}, {}, tmp_path)


def test_log_location_env_and_derived_paths(tmp_path):
    config = load(tmp_path, env={"LOG_LOCATION": str(tmp_path / "var")})
    assert config.log_location == tmp_path / "var"
    assert config.snapshot_dir == tmp_path / "var" / "config"
    assert config.pid_file == tmp_path / "var" / "torchd.pid"
    # TorchServe's METRICS_LOCATION defaults to ./logs, whatever LOG_LOCATION says
    assert config.metrics_location == tmp_path.resolve() / "logs"
    metered = load(tmp_path, env={"LOG_LOCATION": "var", "METRICS_LOCATION": "m"})
    assert metered.metrics_location == tmp_path.resolve() / "m"
    explicit = load(tmp_path, env={"LOG_LOCATION": "x"}, pid_file="/run/t.pid")
    assert explicit.pid_file == Path("/run/t.pid")
    # TS_LOG_LOCATION is the generic spelling and is more specific than LOG_LOCATION.
    both = load(tmp_path, env={"LOG_LOCATION": "a", "TS_LOG_LOCATION": "b"})
    assert both.log_location == tmp_path.resolve() / "b"


def test_systemd_environment(tmp_path):
    env = {"NOTIFY_SOCKET": "/run/notify", "WATCHDOG_USEC": "4000000"}
    config = load(tmp_path, env=env)
    assert config.notify_socket == "/run/notify"
    assert config.watchdog_usec == 4000000 and config.watchdog_interval == 2.0
    other = load(tmp_path, env={**env, "WATCHDOG_PID": "1"})
    assert other.watchdog_usec is None  # the watchdog is for another process
    mine = load(tmp_path, env={**env, "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_usec == 4000000


def test_compile_settings_ipex_enable_and_the_inductor_cache_dir(tmp_path):
    default = load(tmp_path)
    assert default.ipex_enable is False and default.torchinductor_cache_dir is None
    config = load(tmp_path, "ipex_enable=true\n",
                  env={"TORCHINDUCTOR_CACHE_DIR": "/var/cache/inductor"})
    assert config.ipex_enable is True
    assert config.torchinductor_cache_dir == "/var/cache/inductor"
    assert load(tmp_path, env={"TS_IPEX_ENABLE": "true"}).ipex_enable is True


# --- warnings and errors ----------------------------------------------------------------------

def test_unknown_key_warns_and_ignored_key_says_ignored(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="daemon.config.settings")
    config = load(tmp_path, "bogus_key=1\nnumber_of_netty_threads=4\nmax_workers=5\n")
    assert config.max_workers == 5
    messages = [record.getMessage() for record in caplog.records]
    assert any("unknown key 'bogus_key'" in m for m in messages)
    assert any("'number_of_netty_threads' is ignored" in m for m in messages)
    assert not any("max_workers" in m for m in messages)


@pytest.mark.parametrize("key, value, reason", [
    ("job_queue_size", "many", "expected an integer"),
    ("job_queue_size", "0", "must be >= 1"),
    ("max_workers", "-1", "must be >= 0"),
    ("default_workers_per_model", "1.5", "expected an integer"),
    ("install_py_dep_per_model", "maybe", "expected true or false"),
    ("enable_model_api", "yes please", "expected true or false"),
    ("inference_address", "localhost:8080", "expected http://host:port"),
    ("management_address", "ftp://127.0.0.1:21", "expected http://host:port"),
    ("metrics_address", "http://127.0.0.1:99999", "port out of range"),
    ("models", "{not json", "invalid JSON"),
    ("models", '["a"]', "expected a JSON object"),
    ("models", '{"a": {"1.0": {"minWorkers": "x"}}}', "minWorkers='x': expected an integer"),
    ("models", '{"a": {"1.0": {"minWorkers": 2, "maxWorkers": 1}}}', "maxWorkers cannot"),
    ("allowed_urls", "https://(.*", "invalid regular expression"),
    ("worker_spawn", "thread", "expected one of zygote, exec"),
    ("max_worker_rss", "lots", "expected a size"),
    ("load_models", "all,a.mar", "'all' cannot be combined"),
])
def test_invalid_values_name_the_key_and_value(tmp_path, key, value, reason):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f"{key}={value}\n")
    message = str(info.value)
    assert f"invalid value for {key}" in message
    assert value[:20] in message
    assert reason in message
    assert "config file" in message


def test_invalid_env_and_cli_values_name_their_source(tmp_path):
    with pytest.raises(ConfigError, match=r"max_workers: 'x' \(environment TS_MAX_WORKERS\)"):
        load(tmp_path, env={"TS_MAX_WORKERS": "x"})
    with pytest.raises(ConfigError, match=r"job_queue_size: 'y' \(command line\)"):
        load(tmp_path, job_queue_size="y")


def test_unknown_cli_option_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown option 'no_such'"):
        load(tmp_path, no_such=1)


def test_https_needs_key_and_certificate(tmp_path):
    with pytest.raises(ConfigError, match="private_key_file is required"):
        load(tmp_path, "inference_address=https://127.0.0.1:8443\n")
    with pytest.raises(ConfigError, match="certificate_file.*file not found"):
        (tmp_path / "key.pem").write_text("k")
        load(tmp_path, "inference_address=https://127.0.0.1:8443\n"
                       "private_key_file=key.pem\ncertificate_file=cert.pem\n")
    (tmp_path / "cert.pem").write_text("c")
    config = load(tmp_path, "inference_address=https://127.0.0.1:8443\n"
                            "private_key_file=key.pem\ncertificate_file=cert.pem\n")
    assert config.inference_address.is_tls
    assert config.certificate_file == tmp_path.resolve() / "cert.pem"


# --- typed values -----------------------------------------------------------------------------

def test_addresses():
    assert parse_address("http://0.0.0.0:8080") == BindAddress("http", "0.0.0.0", 8080)
    v6 = parse_address("https://[::1]:8443")
    assert (v6.host, v6.port, v6.is_tls, v6.is_loopback) == ("::1", 8443, True, True)
    assert v6.bind == "[::1]:8443" and v6.url == "https://[::1]:8443"
    assert parse_address("http://localhost").port == 80
    assert parse_address("http://localhost").is_loopback
    assert parse_address("https://example.com").port == 443
    assert not parse_address("http://example.com:1").is_loopback
    assert not parse_address("http://0.0.0.0:1").is_loopback
    assert parse_address("http://0.0.0.0:1").connect_host == "127.0.0.1"
    assert parse_address("http://127.0.0.2:1").is_loopback
    unix = parse_address("unix:/run/torchd/mgmt.sock")
    assert unix.is_unix and unix.is_loopback and unix.path == Path("/run/torchd/mgmt.sock")
    assert unix.bind == "unix:/run/torchd/mgmt.sock"
    assert parse_address("unix:///run/x.sock").path == Path("/run/x.sock")


def test_load_models_entries(tmp_path):
    config = load(tmp_path, "load_models=a=a.mar, b.mar ,https://h/m.mar?x=1\n")
    assert config.load_models == ("a=a.mar", "b.mar", "https://h/m.mar?x=1")
    assert config.startup_models == (
        StartupModel("a", "a.mar"), StartupModel(None, "b.mar"),
        StartupModel(None, "https://h/m.mar?x=1"))
    assert not config.load_all_models
    assert load(tmp_path, "load_models=all\n").load_all_models
    assert load(tmp_path, "load_models=all\n").startup_models == ()
    assert split_model_entry("noop=s3://bucket/noop.mar") == StartupModel("noop",
                                                                          "s3://bucket/noop.mar")


def test_startup_models_in_store(tmp_path):
    for name in ("b.mar", "a.tar.gz", "c.tgz", "notes.txt", ".hidden.mar"):
        (tmp_path / name).write_text("x")
    (tmp_path / "dirmodel").mkdir()
    assert [m.url for m in startup_models_in_store(tmp_path)] == [
        "a.tar.gz", "b.mar", "c.tgz", "dirmodel"]


def test_models_json_typed_and_looked_up(tmp_path, caplog):
    text = (
        'models={"noop": {"1.0": {"defaultVersion": true, "marName": "noop.mar", \\\n'
        '   "minWorkers": "1", "maxWorkers": 3, "batchSize": 4, "maxBatchDelay": 50, \\\n'
        '   "responseTimeout": 9, "startupTimeout": 8, "colour": "red"}, \\\n'
        '   "2.0": {"minWorkers": 0}}}\n'
    )
    config = load(tmp_path, text)
    assert config.models["noop"]["1.0"] == {
        "defaultVersion": True, "marName": "noop.mar", "minWorkers": 1, "maxWorkers": 3,
        "batchSize": 4, "maxBatchDelay": 50, "responseTimeout": 9, "startupTimeout": 8}
    assert config.model_settings("noop")["maxWorkers"] == 3  # the default version
    assert config.model_settings("noop", "2.0") == {"minWorkers": 0}
    assert config.model_settings("other") == {}
    assert "unknown setting 'colour'" in caplog.text


def test_sizes_and_bools(tmp_path):
    config = load(tmp_path, "max_worker_rss=2G\nmax_request_size=1024\nncs=TRUE\n"
                            "install_py_dep_per_model=false\n")
    assert config.max_worker_rss == 2 * 1024 ** 3
    assert config.max_request_size == 1024
    assert config.ncs is True and config.install_py_dep_per_model is False


# --- derived security defaults ----------------------------------------------------------------

def test_loopback_defaults_open_model_api_without_tokens(tmp_path):
    config = load(tmp_path)
    assert config.all_loopback
    assert config.model_api_enabled
    assert not config.token_auth_enabled


def test_wildcard_management_closes_model_api_and_enables_tokens(tmp_path):
    config = load(tmp_path, "management_address=http://0.0.0.0:8081\n")
    assert not config.all_loopback
    assert not config.model_api_enabled
    assert config.token_auth_enabled


def test_wildcard_inference_only_keeps_model_api_but_enables_tokens(tmp_path):
    config = load(tmp_path, "inference_address=http://0.0.0.0:8080\n")
    assert config.model_api_enabled  # management is still loopback
    assert config.token_auth_enabled  # but not every listener is


def test_unix_sockets_count_as_local(tmp_path):
    config = load(tmp_path, f"management_address=unix:{tmp_path}/m.sock\n")
    assert config.all_loopback and config.model_api_enabled and not config.token_auth_enabled


@pytest.mark.parametrize("setting, value", [("true", True), ("false", False)])
def test_explicit_settings_win_over_address_defaults(tmp_path, setting, value):
    exposed = ("management_address=http://0.0.0.0:8081\n"
               f"enable_model_api={setting}\ndisable_token_authorization={setting}\n")
    config = load(tmp_path, exposed)
    assert config.model_api_enabled is value
    assert config.token_auth_enabled is (not value)
    local = load(tmp_path, f"enable_model_api={setting}\n"
                           f"disable_token_authorization={setting}\n")
    assert local.model_api_enabled is value
    assert local.token_auth_enabled is (not value)


def allowed(config, url: str) -> bool:
    """The check registration makes (daemon/control/manager.py) with this config's list."""
    return url_is_allowed(url, list(config.effective_allowed_urls))


def test_allowed_urls_explicit_list_replaces_default(tmp_path):
    config = load(tmp_path)
    assert allowed(config, "https://example.com/m.mar")
    assert allowed(config, "HTTPS://EXAMPLE.COM/m.mar")  # case-insensitive
    assert not allowed(config, "http://example.com/m.mar")
    # As in Java properties files, a backslash escapes: write \\. for a regex's \.
    explicit = load(tmp_path, r"allowed_urls=http://127\\.0\\.0\\.1:\\d+/.*,s3://ok/.*" + "\n")
    assert explicit.effective_allowed_urls == (r"http://127\.0\.0\.1:\d+/.*", "s3://ok/.*")
    assert allowed(explicit, "http://127.0.0.1:9/a.mar")
    assert not allowed(explicit, "https://example.com/m.mar")
    assert not allowed(explicit, "xs3://ok/a")  # full match, not search


# --- docs -------------------------------------------------------------------------------------

def test_settings_table_lists_every_key_once():
    table = settings_table_markdown()
    for setting in SETTINGS:
        assert table.count(f"| `{setting.name}` |") == 1
    assert "`--models`" in table and "`--disable-token-auth`" in table


def test_config_is_frozen(tmp_path):
    config = load(tmp_path)
    with pytest.raises(AttributeError):
        config.max_workers = 1  # type: ignore[misc]
    assert config.with_overrides(max_workers=1).max_workers == 1
