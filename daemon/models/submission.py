"""Putting a prediction job in its model version's queue, and counting its outcome: the steps
every front end (REST's hot path, gRPC) takes the same way."""
from __future__ import annotations

import time
from typing import Any

from daemon.errors import TorchdError, no_worker_error
from daemon.models.queue import Job, QueueFull, queue_full_error
from daemon.models.registry import ModelVersion


def submit_job(supervisor: Any, metrics: Any, mv: ModelVersion, job: Job, named: bool) -> None:
    """Queue ``job``; a refusal (no worker, queue full, closed) is counted, then raised."""
    try:
        if not supervisor.can_serve(mv):
            raise no_worker_error(mv.name)
        try:
            mv.queue.submit(job)
        except QueueFull:
            raise queue_full_error(mv.name) from None
    except TorchdError as exc:
        record_outcome(metrics, mv, job, exc.status, named)
        raise


def record_outcome(metrics: Any, mv: ModelVersion, job: Job, status: int, named: bool) -> None:
    """Latency hooks: arrival, dispatch and answer times (TorchServe's ts_* metrics)."""
    now = time.monotonic()
    dispatched = job.dispatched_at or now
    metrics.observe_request(mv.name, mv.version, status, (dispatched - job.arrival) * 1e6,
                            (now - job.arrival) * 1e6, named_version=named)
