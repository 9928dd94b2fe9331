"""One worker process as the Supervisor sees it."""
from __future__ import annotations

import asyncio
import datetime
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from daemon.workers.states import WorkerState, check_transition

if TYPE_CHECKING:
    from daemon.models.registry import ModelVersion
    from daemon.models.queue import Job
    from daemon.workers.connection import WorkerConnection


@dataclass(eq=False)
class WorkerHandle:
    id: str
    mv: ModelVersion
    state: WorkerState = WorkerState.STARTING
    pid: int | None = None
    conn: WorkerConnection | None = None
    started_wall: datetime.datetime = field(
        default_factory=lambda: datetime.datetime.now(datetime.timezone.utc))
    started_at: float = 0.0            # monotonic
    ready_since: float | None = None
    idle_since: float | None = None
    failures: int = 0                  # consecutive crashes, for the backoff delay
    start_failures: int = 0            # consecutive failures to reach READY
    retry_at: float = 0.0
    last_error: str | None = None
    batch: list[Job] | None = None
    served: int = 0
    retiring: bool = False             # recycled: stops once its replacement is READY
    stop_deadline: float | None = None
    kill_reason: str | None = None     # why the supervisor killed it (heartbeat), for lastError
    oom_baseline: int = 0              # cgroup oom_kill count when it started
    returncode: int | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    ping_sent: int = 0
    ping_sent_at: float = 0.0

    def move(self, new: WorkerState) -> None:
        check_transition(self.state, new)
        self.state = new

    @property
    def title(self) -> str:
        return f"torchd worker {self.mv.name} {self.mv.version} {self.id}"

    @property
    def start_time_iso(self) -> str:
        stamp = self.started_wall.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        return stamp + "Z"
