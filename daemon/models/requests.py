"""What a register call asks for, as the model manager takes it (from the HTTP API, the startup
models, or a snapshot being restored), and the ranges its parameters and names must keep."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from daemon.errors import BadRequest


@dataclass
class RegisterRequest:
    """POST /models parameters; None means "not given" (explicit values beat the YAML)."""

    url: str | None
    model_name: str | None = None
    handler: str | None = None
    runtime: str | None = None
    batch_size: int | None = None
    max_batch_delay: int | None = None
    initial_workers: int | None = None
    # A startup model's workers when neither the archive's model-config.yaml nor the config's
    # ``models`` JSON sets minWorkers (Config.startup_workers_per_model, as TorchServe); unlike
    # initial_workers it does not beat the YAML.
    default_workers: int | None = None
    max_workers: int | None = None
    synchronous: bool = True
    response_timeout: int | None = None
    startup_timeout: int | None = None
    job_queue_size: int | None = None
    s3_sse_kms: bool = False
    loaded_at_startup: bool = False
    # Restoring a snapshot: the model-store file ``url`` was once downloaded to. The archive
    # is read from there (never fetched again) and stays ours to delete on unregister.
    downloaded_copy: str | None = None
    # A workflow's node (daemon/workflows/): the workflow's name, whether GET /models lists it,
    # and, for a function node, the archive it runs from (the workflow's own extracted
    # directory, a daemon.models.archives.PreparedArchive): ``url`` is then neither read nor
    # fetched.
    workflow: str | None = None
    listed: bool = True
    prepared: Any = None


# TorchServe's rule for a model's name (torch-model-archiver's, in its README: letters, digits,
# '_', '-' and '.', starting with a letter or digit), applied to the names a register call or a
# manifest gives, and to versions: a name is a URL path segment, a log field, a metric label.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
MAX_NAME = 255   # characters; a file name's limit, so a name can name its archive too
NAME_RULE = (f"a letter or digit, then letters, digits, '_', '-' or '.', at most {MAX_NAME} "
             "characters")
SHOWN = 80       # characters of a refused name echoed in the error


def check_name(what: str, value: str) -> None:
    """BadRequest unless ``value`` is a valid model name (``what``: "model name", ...)."""
    if len(value) <= MAX_NAME and NAME_PATTERN.fullmatch(value):
        return
    shown = value if value.isprintable() else ascii(value)
    if len(shown) > SHOWN:
        shown = f"{shown[:SHOWN]}... ({len(value)} characters)"
    raise BadRequest(f"Invalid {what}: {shown} (TorchServe's rule: {NAME_RULE})")


def check_parameters(req: RegisterRequest) -> None:
    """BadRequest naming the first explicit parameter out of its range. -1 is TorchServe's
    "the default" for the timeouts (0 too for response_timeout: no request could finish in
    0 s; startup_timeout=0 fails every start, as in TorchServe). initial_workers of 0 or less
    is TorchServe's 0 workers; its upper bound is max_workers (the manager's check)."""
    if req.model_name is not None:
        check_name("model name", req.model_name)
    _at_least("batch_size", req.batch_size, 1)
    _at_least("max_batch_delay", req.max_batch_delay, 0)
    for name, value in (("response_timeout", req.response_timeout),
                        ("startup_timeout", req.startup_timeout)):
        if value is not None and value < -1:
            raise BadRequest(f"Parameter {name} must be -1 (the default) or 0 or more, "
                             f"not {value}.")


def check_scale_timeout(timeout: int) -> None:
    if timeout < -1:
        raise BadRequest("Parameter timeout must be -1 (up to the model's response_timeout) "
                         f"or 0 or more, not {timeout}.")


def _at_least(name: str, value: int | None, least: int) -> None:
    if value is not None and value < least:
        raise BadRequest(f"Parameter {name} must be at least {least}, not {value}.")
