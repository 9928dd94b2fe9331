"""What a start checks before it binds a port or loads a model: a mistake in the config must
fail the start at once, naming the file, not after every startup model has loaded (or at the
first registration)."""
from __future__ import annotations

import os
import ssl
import tempfile

from daemon.config.settings import Config

SUN_PATH_MAX = 107   # bytes in an AF_UNIX socket's path: sockaddr_un's 108, less the NUL
# The longest socket path a daemon makes: its runtime dir (process.make_runtime_dir: a pid and
# mkdtemp's 8 random characters), then sockets/w<worker id>.sock, ids counting up from 9000.
LONGEST_SOCKET = "torchd-run-{pid}-xxxxxxxx/sockets/w9999999.sock"


def start_problem(config: Config) -> str | None:
    """Why this config cannot serve, or None."""
    return _missing_store(config) or _unusable_tls(config) or _long_socket_paths()


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


def _long_socket_paths() -> str | None:
    """The workers' sockets live under $TMPDIR: one too deep would fail every worker start
    ("AF_UNIX path too long") after the daemon had come up."""
    temp = tempfile.gettempdir()
    longest = os.path.join(temp, LONGEST_SOCKET.format(pid=os.getpid()))
    if len(os.fsencode(longest)) <= SUN_PATH_MAX:
        return None
    return (f"the temporary directory {temp} is too long for the workers' Unix socket paths "
            f"({len(os.fsencode(longest))} bytes with torchd's own part, at most "
            f"{SUN_PATH_MAX}): set TMPDIR to a shorter directory")
