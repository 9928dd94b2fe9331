"""What a start checks before it binds a port or loads a model: a mistake in the config must
fail the start at once, naming the file, not after every startup model has loaded (or at the
first registration)."""
from __future__ import annotations

import ssl

from daemon.config.settings import Config


def start_problem(config: Config) -> str | None:
    """Why this config cannot serve, or None."""
    return _missing_store(config) or _unusable_tls(config)


def _missing_store(config: Config) -> str | None:
    """As TorchServe, no start without the model store: a mistyped path would otherwise show
    only at the first registration, as a model "not found"."""
    for label, path in (("model store", config.model_store),
                        ("workflow store", config.workflow_store)):
        if path is not None and not path.is_dir():
            return f"the {label} {path} is not a directory: create it, or name another"
    return None


def _unusable_tls(config: Config) -> str | None:
    """The certificate and key load as the servers load them (a server-side context with
    OpenSSL's defaults): a mismatched pair, or a key OpenSSL finds too small (TorchServe's
    Java accepts 1024-bit RSA), would otherwise fail the listener after the models loaded."""
    if not config.serves_tls:
        return None
    certificate, key = config.certificate_file, config.private_key_file
    if certificate is None or key is None:   # load_config refuses that already
        return "TLS needs certificate_file and private_key_file"
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(certificate, key)
    except (ssl.SSLError, OSError) as exc:
        return (f"certificate_file {certificate} and private_key_file {key} cannot serve "
                f"TLS: {exc}")
    return None
