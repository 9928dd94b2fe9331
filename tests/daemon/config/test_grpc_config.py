"""The gRPC listener settings (issue 16): TorchServe's keys, address forms, port keys, TLS, and
their part in the loopback-based security defaults."""
from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config.settings import ConfigError, load_config
from daemon.config.values import BindAddress


def load(tmp_path: Path, text: str = ""):
    (tmp_path / "config.properties").write_text(text)
    return load_config({}, {}, tmp_path)


def test_defaults(tmp_path: Path) -> None:
    listeners = load(tmp_path).grpc_listeners
    assert listeners == {"inference": BindAddress("http", "127.0.0.1", 7070),
                         "management": BindAddress("http", "127.0.0.1", 7071)}
    assert listeners["inference"].bind == "127.0.0.1:7070"


@pytest.mark.parametrize(("text", "inference"), [
    ("grpc_inference_address=0.0.0.0\n", BindAddress("http", "0.0.0.0", 7070)),
    ("grpc_inference_address=0.0.0.0\ngrpc_inference_port=9000\n",
     BindAddress("http", "0.0.0.0", 9000)),
    ("grpc_inference_address=127.0.0.1:9001\n", BindAddress("http", "127.0.0.1", 9001)),
    ("grpc_inference_address=127.0.0.1:9001\ngrpc_inference_port=9002\n",
     BindAddress("http", "127.0.0.1", 9002)),
    ("grpc_inference_address=[::1]:9003\n", BindAddress("http", "::1", 9003)),
    ("grpc_inference_port=9004\n", BindAddress("http", "127.0.0.1", 9004)),
])
def test_address_forms_and_port_keys(tmp_path: Path, text: str, inference: BindAddress) -> None:
    assert load(tmp_path, text).grpc_listeners["inference"] == inference


def test_unix_socket(tmp_path: Path) -> None:
    address = load(tmp_path, "grpc_management_address=unix:/tmp/m.sock\n")
    assert address.grpc_listeners["management"].bind == "unix:/tmp/m.sock"


def test_ssl_needs_key_and_certificate(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="private_key_file is required"):
        load(tmp_path, "enable_grpc_ssl=true\n")
    (tmp_path / "k.pem").write_text("k")
    (tmp_path / "c.pem").write_text("c")
    config = load(tmp_path, "enable_grpc_ssl=true\nprivate_key_file=k.pem\n"
                            "certificate_file=c.pem\n")
    assert all(a.is_tls for a in config.grpc_listeners.values())
    assert not config.inference_address.is_tls


@pytest.mark.parametrize("text", ["grpc_inference_address=ftp://x:1\n",
                                  "grpc_management_address=host:99999\n",
                                  "grpc_inference_port=70000\n",
                                  "grpc_management_port=abc\n"])
def test_invalid_values(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match=f"invalid value for {text.split('=')[0]}"):
        load(tmp_path, text)


def test_a_non_loopback_grpc_listener_turns_the_secure_defaults_on(tmp_path: Path) -> None:
    config = load(tmp_path, "grpc_inference_address=0.0.0.0\n")
    assert config.token_auth_enabled and config.model_api_enabled
    config = load(tmp_path, "grpc_management_address=0.0.0.0\n")
    assert config.token_auth_enabled and not config.model_api_enabled
    config = load(tmp_path, "grpc_management_address=0.0.0.0\nenable_model_api=true\n"
                            "disable_token_authorization=true\n")
    assert not config.token_auth_enabled and config.model_api_enabled
