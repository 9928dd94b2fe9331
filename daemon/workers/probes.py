"""Asking live workers how they are: heartbeat pings, describe rows, the handler's metadata."""
from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable
from typing import Any

from daemon.errors import InternalServerError
from daemon.workers.connection import ConnectionLost
from daemon.workers.handle import WorkerHandle
from protocol import messages

logger = logging.getLogger(__name__)


class Heartbeat:
    """Pings workers; a worker that leaves a ping unanswered for a whole interval is hung.

    An unanswered ping is never replaced by a newer one, so the interval counts from the first
    ping the worker ignored, however irregular the calls."""

    def __init__(self, interval: float, clock: Callable[[], float]) -> None:
        self.interval = interval
        self.clock = clock
        self._seq = itertools.count(1)
        self._unanswered: dict[str, tuple[int, float]] = {}   # worker id -> (seq, sent at)

    def beat(self, handles: Iterable[WorkerHandle]) -> list[WorkerHandle]:
        """Ping each of ``handles`` (READY workers) that has no ping out; return the hung."""
        now, hung, seen = self.clock(), [], set()
        for handle in handles:
            seen.add(handle.id)
            conn = handle.conn
            if conn is None:   # nothing to ping (READY workers are connected)
                continue
            if conn.held:
                # its socket is not being read while a client catches up on a stream: its
                # answers wait there (response_timeout still bounds the batch)
                self._unanswered.pop(handle.id, None)
                continue
            sent = self._unanswered.get(handle.id)
            if sent is not None and conn.last_pong < sent[0]:
                if now - sent[1] >= self.interval:
                    hung.append(handle)
                continue
            seq = next(self._seq)
            self._unanswered[handle.id] = (seq, now)
            try:
                conn.ping(seq)
            except (ConnectionLost, OSError) as exc:
                # Its runner sees the lost connection and reports the death.
                logger.debug("ping to worker %s failed: %s", handle.id, exc)
        for gone in set(self._unanswered) - seen:
            del self._unanswered[gone]
        return hung


def describe_row(handle: WorkerHandle, rss: int, gpu: dict[str, Any]) -> dict[str, Any]:
    """One worker as the describe API shows it; ``gpu``: its GPU fields (``gpu``,
    ``gpuUsage``, perhaps ``gpuMemoryUsage``: GpuPlacement.describe)."""
    return {"id": handle.id, "startTime": handle.start_time_iso,
            "status": handle.state.value, "memoryUsage": rss, "pid": handle.pid or -1,
            **gpu, "threads": handle.threads,
            **({"template": handle.template_pid} if handle.template_pid else {}),
            **({"lastError": handle.last_error} if handle.last_error else {})}


async def handler_metadata(handle: WorkerHandle) -> Any:
    """The handler's describe_handle() result, asked of the worker (a connected one)."""
    if handle.conn is None:
        raise InternalServerError(f"worker {handle.id} is not connected")
    reply = await handle.conn.request(messages.describe(), messages.DESCRIBED,
                                      handle.mv.settings.response_timeout)
    if not reply.get("ok"):
        raise InternalServerError(f"describe_handle failed: {reply.get('error')}")
    return reply.get("result")


def over_memory_limit(handles: Iterable[WorkerHandle], rss_of: Callable[[int], int],
                      metrics: Any = None) -> list[WorkerHandle]:
    """The workers not yet retiring whose RSS exceeds their model's max_worker_rss
    (publishing every RSS)."""
    over = []
    for handle in handles:
        if handle.pid is None:   # no process yet (READY workers have one)
            continue
        rss = rss_of(handle.pid)
        if metrics is not None:
            metrics.set_worker_rss(handle.mv.name, handle.mv.version, handle.id, rss)
        limit = handle.mv.settings.max_worker_rss
        if limit and rss > limit and not handle.retiring:
            logger.warning("worker %s uses %d bytes (> %d); recycling it", handle.id, rss, limit)
            over.append(handle)
    return over
