"""What a register call asks for, as the model manager takes it (from the HTTP API, the startup
models, or a snapshot being restored)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
