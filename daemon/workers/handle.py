"""One worker process as the Supervisor sees it, and who writes which of its fields."""
from __future__ import annotations

import asyncio
import datetime
from dataclasses import dataclass, field

from daemon.models.dispatching import WorkerDispatcher
from daemon.models.registry import ModelVersion
from daemon.workers.connection import WorkerConnection
from daemon.workers.states import LIVE_STATES, WorkerState, check_transition
from daemon.workers.templates import TemplateHandle


@dataclass(eq=False)
class WorkerHandle:
    id: str
    mv: ModelVersion
    slot: int                          # which of the version's worker slots it fills
    gpu: int | None = None             # its slot's GPU (CUDA ordinal); None: the CPU
    # -- written by the Supervisor only --
    state: WorkerState = WorkerState.STARTING
    pid: int | None = None
    started_wall: datetime.datetime = field(
        default_factory=lambda: datetime.datetime.now(datetime.timezone.utc))
    started_at: float = 0.0            # monotonic
    ready_since: float | None = None
    retry_at: float = 0.0              # BACKOFF: when its replacement is due
    last_error: str | None = None
    retiring: bool = False             # recycled: stops once its replacement is READY
    stop_deadline: float | None = None
    threads: int = 0                   # torch threads it was given (LOAD) or told (THREADS)
    template: TemplateHandle | None = None   # its version's template, to be forked from
    returncode: int | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None   # its runner's task
    # -- written by its runner only --
    conn: WorkerConnection | None = None
    dispatcher: WorkerDispatcher | None = None   # set once it is loaded; feeds it batches
    kill_reason: str | None = None     # why it was killed (heartbeat), for lastError
    oom_baseline: int = 0              # cgroup oom_kill count when it started
    template_pid: int | None = None    # the template it was forked from (preloadModel)

    def move(self, new: WorkerState) -> None:
        check_transition(self.state, new)
        self.state = new

    @property
    def live(self) -> bool:
        """Starting, ready or restarting (LIVE_STATES): it holds its slot's GPU."""
        return self.state in LIVE_STATES

    @property
    def busy(self) -> bool:
        return self.dispatcher is not None and self.dispatcher.batch is not None

    def ready_for(self, now: float) -> float | None:
        return None if self.ready_since is None else now - self.ready_since

    @property
    def answered(self) -> int:
        """Batches it answered itself: one proves it (see VersionRecord.crashed)."""
        return 0 if self.dispatcher is None else self.dispatcher.answered

    @property
    def jobs_held(self) -> int:
        """Requests in its batch not answered yet (the in-flight count reads it at scrape)."""
        batch = None if self.dispatcher is None else self.dispatcher.batch
        return 0 if batch is None else sum(1 for job in batch if not job.finished)

    @property
    def idle_since(self) -> float | None:
        """Since when it has had no batch; None while busy or not serving yet."""
        return None if self.dispatcher is None else self.dispatcher.idle_since

    @property
    def title(self) -> str:
        return f"torchd worker {self.mv.name} {self.mv.version} {self.id}"

    @property
    def start_time_iso(self) -> str:
        stamp = self.started_wall.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        return stamp + "Z"


def stop_preference(handle: WorkerHandle) -> tuple[int, int]:
    """Stop broken and starting workers before serving ones, idle before busy, newest first."""
    busy = 1 if handle.busy else 0
    return (_STOP_ORDER.get(handle.state, 4) + busy, -int(handle.id))


_STOP_ORDER = {WorkerState.FAILED: 0, WorkerState.BACKOFF: 1, WorkerState.STARTING: 2,
               WorkerState.READY: 3}


