"""The fakes and the Harness of the Supervisor tests (tests/daemon/workers/test_supervisor_*.py):
the Supervisor and its worker runners, driven with a fake clock and fake processes.

No process is started: the launcher is a fake whose "workers" are asyncio tasks speaking the
real frame protocol over real Unix sockets to the real runner, and the process operations
(signal, liveness, RSS) are a fake that turns SIGKILL into a dead fake worker. The clock is
stepped by hand, so backoff delays, the READY period that resets them, heartbeats and the
autoscaler's delays are exact; reconcile/heartbeat/autoscale are called by the test instead of
the supervisor's own loop. A test is an async function decorated with @scenario; it takes the
runtime_dir fixture of tests/daemon/workers/conftest.py. ``until`` (tests/support/waiting.py,
re-exported here) lets the loop run until a condition holds.
"""
from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from daemon.gpus.inventory import GpuInventory
from daemon.metrics import Metrics
from daemon.models.registry import ModelSettings, ModelVersion, Registry
from daemon.models.job import Answer, Failure, Gone, Job, Part
from daemon.models.queue import JobQueue
from daemon.workers.states import RestartPolicy, WorkerState
from daemon.workers.runner import RunnerSettings
from daemon.workers.supervisor import Supervisor, SupervisorSettings
from daemon.workers.handle import WorkerHandle
from protocol import messages
from protocol.streams import read_frame, write_frame
from tests.support.waiting import until   # the tests' one polling helper (real time here)

S = WorkerState
TEST_TIMEOUT = 20.0
HEARTBEAT = 1.0
UP_DELAY = 2.0
DOWN_DELAY = 10.0


# ---- fakes ---------------------------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeProcess:
    """What every fake process shares: its pid, its connection, and how it ends (told to its
    launcher as a real process's exit would be)."""

    def __init__(self, launcher: Any, pid: int) -> None:
        self.launcher, self.pid = launcher, pid
        self.alive = True
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task | None = None

    def exit(self, code: int) -> None:
        if not self.alive:
            return
        self.alive = False
        if self.writer is not None:
            self.writer.close()
        self.launcher.on_exit(self.pid, code)

    def kill(self, sig: int) -> None:
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        self.exit(-sig)


class FakeWorker(FakeProcess):
    """Stands in for one worker process. ``behaviour``: ok | fail_load | no_load | exit."""

    def __init__(self, launcher: FakeLauncher, pid: int, worker_id: str, socket_path: str,
                 behaviour: str, hold: bool) -> None:
        super().__init__(launcher, pid)
        self.id, self.socket_path, self.behaviour = worker_id, socket_path, behaviour
        self.hold = hold                       # keep batches unanswered until answer()
        self.pong = True                       # False: a hung worker (no heartbeat answers)
        self.held: list[dict] = []
        self.load: dict | None = None          # the LOAD frame it was sent
        self.predicts = 0

    async def run(self) -> None:
        if self.behaviour == "exit":
            self.exit(1)
            return
        reader, self.writer = await asyncio.open_unix_connection(self.socket_path)
        write_frame(self.writer, messages.hello(self.pid, self.id))
        while (message := await read_frame(reader)) is not None:
            kind = message["kind"]
            if kind == messages.LOAD:
                self.load = message
            if kind == messages.LOAD and self.behaviour == "fail_load":
                write_frame(self.writer, messages.loaded(False, "ImportError: no handler"))
                self.exit(1)
                return
            if kind == messages.LOAD and self.behaviour == "ok":
                write_frame(self.writer, messages.loaded(True))
            elif kind == messages.PREDICT:
                self.predicts += len(message["requests"])
                self.held.append(message)
                if not self.hold:
                    self.answer()
            elif kind == messages.PING and self.pong:
                write_frame(self.writer, messages.pong(message["seq"]))
            elif kind == messages.SHUTDOWN:
                break
        self.exit(0)

    def answer(self) -> None:
        for batch in self.held:
            responses = [messages.response(r["id"], 200, "OK", b"done") for r in batch["requests"]]
            write_frame(self.writer, messages.result(batch["batch_id"], responses))
        self.held.clear()


class FakeLauncher:
    def __init__(self, on_exit: Callable[[int, int], None]) -> None:
        self.on_exit = on_exit
        self.behaviour = "ok"
        self.hold = False
        self.by_pid: dict[int, FakeWorker] = {}
        self.spawned: list[FakeWorker] = []
        self.overdue = 0   # spawn_overdue calls
        # set: spawn returns the pid only once it is set (a zygote slow to answer SPAWN, whose
        # child runs and connects meanwhile)
        self.answer_spawn: asyncio.Event | None = None
        self._pids = itertools.count(40000)

    async def start(self) -> None:
        return None

    async def spawn(self, worker_id: str, socket_path: str, title: str,
                    python_path: str | None = None, threads: int = 0) -> int:
        worker = FakeWorker(self, next(self._pids), worker_id, socket_path, self.behaviour,
                            self.hold)
        self.by_pid[worker.pid] = worker
        self.spawned.append(worker)
        worker.task = asyncio.get_running_loop().create_task(worker.run())
        if self.answer_spawn is not None:
            await self.answer_spawn.wait()
        return worker.pid

    def spawn_overdue(self) -> None:
        self.overdue += 1

    def reap_orphans(self) -> None:
        """Fake processes leave no zombies."""

    def reap(self, pid: int) -> bool:
        return True

    async def close(self) -> None:
        for worker in self.spawned:
            if worker.task is not None:
                worker.task.cancel()


class FakeOps:
    """ProcessOps over fake workers; records every signal."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.signals: list[tuple[int, int]] = []
        self.groups_ended: list[int] = []

    def signal(self, pid: int, sig: int) -> None:
        self.signals.append((pid, sig))
        worker = self.harness.launcher.by_pid.get(pid)
        if worker is not None and sig in (signal.SIGKILL, signal.SIGTERM):
            worker.kill(sig)

    def end_group(self, pgid: int) -> None:
        self.groups_ended.append(pgid)

    def alive(self, pid: int) -> bool:
        worker = self.harness.launcher.by_pid.get(pid)
        return worker is not None and worker.alive

    def rss(self, pid: int) -> int:
        return 123456


class Harness:
    def __init__(self, runtime_dir: Path, policy: RestartPolicy | None = None,
                 gpus: GpuInventory | None = None) -> None:
        self.clock = FakeClock()
        self.registry = Registry()
        self.metrics = Metrics(hostname="test")
        self.launcher: FakeLauncher = None  # type: ignore[assignment]
        self.ops = FakeOps(self)
        runtime_dir.mkdir(parents=True, exist_ok=True)
        settings = SupervisorSettings(
            RunnerSettings(runtime_dir=runtime_dir, max_frame=1 << 20, server_version="test"),
            heartbeat_interval=HEARTBEAT, autoscale_up_delay=UP_DELAY,
            autoscale_down_delay=DOWN_DELAY, policy=policy or RestartPolicy())
        self.sup = Supervisor(self.registry, settings, self._launcher, metrics=self.metrics,
                              clock=self.clock, ops=self.ops, gpus=gpus)

    def _launcher(self, on_exit: Callable[[int, int], None]) -> FakeLauncher:
        self.launcher = FakeLauncher(on_exit)
        return self.launcher

    def model(self, name: str = "m", **settings: Any) -> ModelVersion:
        archive = SimpleNamespace(model_dir="/nonexistent", manifest={}, model_yaml_config={})
        mv = ModelVersion(name=name, version="1.0", url=f"{name}.mar", handler="handler.py",
                          runtime="python", archive=archive,
                          settings=ModelSettings(**settings), queue=JobQueue(100))
        self.registry.add(mv)
        return mv

    def handles(self, mv: ModelVersion, *states: WorkerState) -> list[WorkerHandle]:
        return [h for h in self.sup.handles(mv) if not states or h.state in states]

    def fake(self, handle: WorkerHandle) -> FakeWorker:
        return self.launcher.by_pid[handle.pid]

    def autoscale_events(self, mv: ModelVersion, direction: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "torchd_autoscale_events_total",
            {"model_name": mv.name, "model_version": mv.version, "direction": direction})
        return value or 0.0


async def ready(h: Harness, mv: ModelVersion, count: int) -> list[WorkerHandle]:
    await until(lambda: len(h.handles(mv, S.READY)) == count)
    return h.handles(mv, S.READY)


async def one_busy_worker(h: Harness, **settings: Any,
                          ) -> tuple[ModelVersion, WorkerHandle, Job]:
    """A model with one READY worker that holds a job (its fake process answers when told)."""
    mv = h.model(**settings)
    h.launcher.hold = True
    scale(h, mv, 1, 1)
    (handle,) = await ready(h, mv, 1)
    job = submit(mv)
    await until(lambda: h.fake(handle).held)
    return mv, handle, job


def scale(h: Harness, mv: ModelVersion, min_workers: int, max_workers: int,
          stop_timeout: float | None = None) -> None:
    """What the model manager does: the new range through the Supervisor."""
    h.sup.update_settings(mv, stop_timeout=stop_timeout, min_workers=min_workers,
                          max_workers=max_workers)


def submit(mv: ModelVersion, name: str = "r") -> Job:
    job = Job(id=f"{name}-{id(object())}", arrival=0.0, request=messages.request(
        "", [], [messages.parameter("body", None, b"x")]))
    job.request["id"] = job.id
    mv.queue.submit(job)
    return job


async def outcome(job: Job, timeout: float = 3.0) -> tuple[str, Any]:
    """The job's next event as (kind, payload): ("part"|"final", response), ("error",
    TorchdError) or ("gone", None)."""
    event = await asyncio.wait_for(job.next_event(), timeout)
    if isinstance(event, Failure):
        return "error", event.error
    if isinstance(event, Gone):
        return "gone", None
    assert isinstance(event, Part)
    return ("final" if isinstance(event, Answer) else "part"), event.response


def scenario(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run an async test body with a fresh Harness, closing the supervisor afterwards."""
    def wrapper(runtime_dir: Path) -> None:
        async def main() -> None:
            h = Harness(runtime_dir)
            try:
                await fn(h)
            finally:
                await h.sup.close(0)
        asyncio.run(asyncio.wait_for(main(), TEST_TIMEOUT))
    # Not functools.wraps: pytest would then ask for the body's parameters as fixtures.
    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper
