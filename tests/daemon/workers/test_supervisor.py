"""The Supervisor and its worker runners, driven with a fake clock and fake processes.

No process is started: the launcher is a fake whose "workers" are asyncio tasks speaking the
real frame protocol over real Unix sockets to the real runner, and the process operations
(signal, liveness, RSS) are a fake that turns SIGKILL into a dead fake worker. The clock is
stepped by hand, so backoff delays, the READY period that resets them, heartbeats and the
autoscaler's delays are exact; reconcile/heartbeat/autoscale are called by the test instead of
the supervisor's own loop.
"""
from __future__ import annotations

import asyncio
import itertools
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from daemon.gpus import GpuInventory
from daemon.metrics import Metrics
from daemon.models.registry import ModelSettings, ModelVersion, Registry
from daemon.models.queue import Job, JobQueue
from daemon.workers.states import RestartPolicy, WorkerState
from daemon.workers.supervisor import Supervisor, SupervisorSettings
from daemon.workers.handle import WorkerHandle
from protocol import messages
from protocol.streams import read_frame, write_frame

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


class FakeWorker:
    """Stands in for one worker process. ``behaviour``: ok | fail_load | no_load | exit."""

    def __init__(self, launcher: FakeLauncher, pid: int, worker_id: str, socket_path: str,
                 behaviour: str, hold: bool) -> None:
        self.launcher, self.pid, self.id = launcher, pid, worker_id
        self.socket_path, self.behaviour = socket_path, behaviour
        self.hold = hold                       # keep batches unanswered until answer()
        self.pong = True                       # False: a hung worker (no heartbeat answers)
        self.alive = True
        self.held: list[dict] = []
        self.load: dict | None = None          # the LOAD frame it was sent
        self.predicts = 0
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task | None = None

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


class FakeLauncher:
    def __init__(self, on_exit: Callable[[int, int], None]) -> None:
        self.on_exit = on_exit
        self.behaviour = "ok"
        self.hold = False
        self.by_pid: dict[int, FakeWorker] = {}
        self.spawned: list[FakeWorker] = []
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
        return worker.pid

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

    def signal(self, pid: int, sig: int) -> None:
        self.signals.append((pid, sig))
        worker = self.harness.launcher.by_pid.get(pid)
        if worker is not None and sig in (signal.SIGKILL, signal.SIGTERM):
            worker.kill(sig)

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
            runtime_dir=runtime_dir, max_frame=1 << 20, server_version="test",
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


async def until(predicate: Callable[[], Any], timeout: float = 3.0) -> Any:
    """Let the event loop run until ``predicate()`` holds (real time: sockets are real)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := predicate()):
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.005)
    return value


async def ready(h: Harness, mv: ModelVersion, count: int) -> list[WorkerHandle]:
    await until(lambda: len(h.handles(mv, S.READY)) == count)
    return h.handles(mv, S.READY)


async def one_busy_worker(h: Harness) -> tuple[ModelVersion, WorkerHandle, Job]:
    """A model with one READY worker that holds a job (its fake process answers when told)."""
    mv = h.model()
    h.launcher.hold = True
    scale(h, mv, 1, 1)
    (handle,) = await ready(h, mv, 1)
    job = submit(mv)
    await until(lambda: h.fake(handle).held)
    return mv, handle, job


def scale(h: Harness, mv: ModelVersion, min_workers: int, max_workers: int,
          stop_timeout: float | None = None) -> None:
    """What the model manager does: the registry's range first, then the Supervisor."""
    mv.settings.min_workers, mv.settings.max_workers = min_workers, max_workers
    h.sup.scale(mv, stop_timeout=stop_timeout)


def submit(mv: ModelVersion, name: str = "r") -> Job:
    job = Job(id=f"{name}-{id(object())}", arrival=0.0, request=messages.request(
        "", [], [messages.parameter("body", None, b"x")]))
    job.request["id"] = job.id
    mv.queue.submit(job)
    return job


async def outcome(job: Job, timeout: float = 3.0) -> tuple[str, Any]:
    return await asyncio.wait_for(job.next_event(), timeout)


@pytest.fixture
def runtime_dir():
    # Short: Unix socket paths are limited to ~107 bytes, pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="sv-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


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


# ---- scale and reconcile -------------------------------------------------------------------

@scenario
async def test_scale_starts_workers_and_reconcile_is_idempotent(h: Harness) -> None:
    mv = h.model()
    scale(h, mv, 2, 2)
    assert [x.state for x in h.handles(mv)] == [S.STARTING, S.STARTING]
    for _ in range(3):
        h.sup.reconcile()
    assert len(h.handles(mv)) == 2
    await ready(h, mv, 2)
    h.sup.reconcile()
    assert len(h.launcher.spawned) == 2
    described = h.sup.describe_workers(mv)
    assert [w["status"] for w in described] == ["READY", "READY"]
    assert [w["id"] for w in described] == ["9000", "9001"]
    assert all(w["pid"] >= 40000 and w["memoryUsage"] == 123456 for w in described)


@scenario
async def test_scale_down_stops_the_surplus_and_forgets_it(h: Harness) -> None:
    mv = h.model()
    scale(h, mv, 3, 3)
    await ready(h, mv, 3)
    scale(h, mv, 1, 1)
    assert len(h.handles(mv, S.STOPPING)) == 2
    await until(lambda: len(h.handles(mv)) == 1)
    assert [x.id for x in h.handles(mv)] == ["9000"]       # the newest went first
    assert not any(sig == signal.SIGKILL for _, sig in h.ops.signals)  # polite stop


# ---- crashes, backoff, reset ---------------------------------------------------------------

async def crash(h: Harness, mv: ModelVersion) -> WorkerHandle:
    (handle,) = h.handles(mv, S.READY)
    h.fake(handle).kill(signal.SIGKILL)
    await until(lambda: handle.state is S.BACKOFF)
    return handle


@scenario
async def test_crash_backoff_doubles_from_zero_to_the_cap(h: Harness) -> None:
    mv = h.model()
    scale(h, mv, 1, 1)
    await ready(h, mv, 1)
    for expected in (0, 1, 2, 4, 8, 16, 30, 30):
        handle = await crash(h, mv)
        assert handle.retry_at - h.clock() == expected
        assert "closed its socket" in handle.last_error
        if expected:
            h.sup.reconcile()
            h.clock.advance(expected - 0.5)
            h.sup.reconcile()
            assert h.handles(mv) == [handle]              # still waiting out its delay
            h.clock.advance(0.5)
        h.sup.reconcile()
        (fresh,) = h.handles(mv)
        assert fresh is not handle and fresh.state is S.STARTING
        assert handle.state is S.STOPPED
        await ready(h, mv, 1)
    assert h.sup.record(mv).restarts == 8


@scenario
async def test_a_proven_ready_period_resets_the_backoff(h: Harness) -> None:
    mv = h.model()
    scale(h, mv, 1, 1)
    await ready(h, mv, 1)
    for expected in (0, 1, 2):
        await crash(h, mv)
        h.clock.advance(expected)
        h.sup.reconcile()
        await ready(h, mv, 1)
    h.clock.advance(h.sup.settings.policy.reset_after)     # READY long enough: proven
    handle = await crash(h, mv)
    assert handle.retry_at == h.clock()                    # immediate again
    h.sup.reconcile()
    await ready(h, mv, 1)
    handle = await crash(h, mv)                            # and the count restarts at 1
    assert handle.retry_at - h.clock() == 1


@scenario
async def test_in_flight_batch_fails_500_when_its_worker_dies(h: Harness) -> None:
    mv, handle, job = await one_busy_worker(h)
    queued = submit(mv)
    h.fake(handle).kill(signal.SIGKILL)
    kind, error = await outcome(job)
    assert kind == "error" and error.status == 500 and error.message == "Worker died."
    assert not queued.finished                             # waits for the replacement
    h.launcher.hold = False
    h.sup.reconcile()
    await ready(h, mv, 1)
    kind, response = await outcome(queued)
    assert kind == "final" and response["body"] == b"done"


# ---- start failures, FAILED, recovery ------------------------------------------------------

@scenario
async def test_start_failures_back_off_then_fail_until_the_next_scale(h: Harness) -> None:
    mv = h.model()
    h.launcher.behaviour = "fail_load"
    scale(h, mv, 1, 1)
    for expected_delay in (0, 1):
        (handle,) = await until(lambda: h.handles(mv, S.BACKOFF))
        assert handle.last_error == "ImportError: no handler"
        assert handle.retry_at - h.clock() == expected_delay
        h.clock.advance(expected_delay)
        h.sup.reconcile()
    (failed,) = await until(lambda: h.handles(mv, S.FAILED))
    assert h.sup.record(mv).slot(failed.slot).start_failures == 3
    assert len(h.launcher.spawned) == 3
    assert h.sup.describe_workers(mv)[0]["status"] == "FAILED"
    assert h.sup.describe_workers(mv)[0]["lastError"] == "ImportError: no handler"
    assert h.sup.record(mv).last_error == "ImportError: no handler"

    h.clock.advance(3600)                                  # FAILED stays FAILED
    h.sup.reconcile()
    assert h.handles(mv) == [failed] and len(h.launcher.spawned) == 3
    assert not h.sup.can_serve(mv) and not h.sup.healthy(mv)
    job = submit(mv)
    h.sup.reconcile()                                      # nobody can serve: 503 at once
    kind, error = await outcome(job)
    assert kind == "error" and error.status == 503

    h.launcher.behaviour = "ok"                            # fixed; the next scale call
    scale(h, mv, 1, 1)
    assert failed.state is S.STOPPED
    (fresh,) = h.handles(mv)
    assert fresh.state is S.STARTING and h.sup.record(mv).slot(fresh.slot).start_failures == 0
    await ready(h, mv, 1)
    assert h.sup.healthy(mv)


@scenario
async def test_a_process_that_exits_before_connecting_failed_to_start(h: Harness) -> None:
    mv = h.model()
    h.launcher.behaviour = "exit"
    scale(h, mv, 1, 1)
    (handle,) = await until(lambda: h.handles(mv, S.BACKOFF))
    assert handle.last_error == "worker process exited with code 1"


@scenario
async def test_startup_timeout_kills_the_loading_worker(h: Harness) -> None:
    mv = h.model(startup_timeout=0.2)   # type: ignore[arg-type]  (seconds; real time)
    h.launcher.behaviour = "no_load"
    scale(h, mv, 1, 1)
    (handle,) = await until(lambda: h.handles(mv, S.BACKOFF))
    assert handle.last_error == "worker did not load within 0.2 s (startup_timeout)"
    assert (handle.pid, signal.SIGKILL) in h.ops.signals


@scenario
async def test_a_stop_while_starting_is_not_a_start_failure(h: Harness) -> None:
    mv = h.model()
    h.launcher.behaviour = "no_load"
    scale(h, mv, 1, 1)
    await until(lambda: h.launcher.spawned)
    scale(h, mv, 0, 0)
    await until(lambda: not h.handles(mv))
    record = h.sup.record(mv)
    assert record.start_failures == 0 and record.last_error is None


@scenario
async def test_wait_for_workers_reports_the_first_start_failure(h: Harness) -> None:
    mv = h.model()
    h.launcher.behaviour = "fail_load"
    scale(h, mv, 1, 1)
    result = await h.sup.wait_for_workers(mv, 5)
    assert result.ready == 0 and result.error == "ImportError: no handler"


# ---- heartbeat -----------------------------------------------------------------------------

@scenario
async def test_heartbeat_kills_a_hung_worker_and_spares_a_live_one(h: Harness) -> None:
    mv = h.model()
    scale(h, mv, 2, 2)
    live, hung = await ready(h, mv, 2)
    h.fake(hung).pong = False
    h.sup.check_workers()
    await until(lambda: live.conn.last_pong > 0)    # the live one answered its ping
    h.clock.advance(HEARTBEAT * 0.9)
    h.sup.check_workers()                     # not a whole interval yet: nobody is killed
    assert hung.state is S.READY
    h.clock.advance(HEARTBEAT * 0.1)
    h.sup.check_workers()
    await until(lambda: hung.state is S.BACKOFF)
    assert hung.last_error == "hung: missed its heartbeat"
    assert (hung.pid, signal.SIGKILL) in h.ops.signals
    assert live.state is S.READY
    h.sup.reconcile()
    await ready(h, mv, 2)


# ---- drain ---------------------------------------------------------------------------------

@scenario
async def test_scale_down_lets_the_in_flight_batch_finish(h: Harness) -> None:
    mv, handle, job = await one_busy_worker(h)
    scale(h, mv, 0, 0, stop_timeout=10)
    assert handle.state is S.STOPPING
    await asyncio.sleep(0.05)
    assert not job.finished
    h.fake(handle).answer()
    kind, _ = await outcome(job)
    assert kind == "final"
    await until(lambda: not h.handles(mv))
    assert not any(sig == signal.SIGKILL for _, sig in h.ops.signals)


@scenario
async def test_scale_down_with_timeout_zero_stops_at_once(h: Harness) -> None:
    mv, handle, job = await one_busy_worker(h)
    scale(h, mv, 0, 0, stop_timeout=0)
    kind, error = await outcome(job, timeout=1)
    assert kind == "error" and error.status == 503
    await until(lambda: not h.handles(mv))
    assert (handle.pid, signal.SIGKILL) in h.ops.signals
    assert h.sup.record(mv).restarts == 0                    # asked for: not a crash


@scenario
async def test_queued_jobs_get_503_when_no_worker_remains(h: Harness) -> None:
    mv, handle, running = await one_busy_worker(h)
    queued = submit(mv)
    scale(h, mv, 0, 0, stop_timeout=10)
    kind, error = await outcome(queued)
    assert kind == "error" and error.status == 503
    h.fake(handle).answer()
    assert (await outcome(running))[0] == "final"


@scenario
async def test_close_stops_every_worker_and_starts_none(h: Harness) -> None:
    mv = h.model()
    await h.sup.start()                                    # with its own reconcile loop
    scale(h, mv, 2, 2)
    await ready(h, mv, 2)
    await h.sup.close(5)
    assert h.sup.workers == {}
    assert len(h.launcher.spawned) == 2
    assert not any(w.alive for w in h.launcher.spawned)


# ---- autoscaling ---------------------------------------------------------------------------

@scenario
async def test_autoscale_follows_the_queue_within_min_and_max(h: Harness) -> None:
    mv = h.model()
    h.launcher.hold = True
    scale(h, mv, 1, 3)
    await ready(h, mv, 1)
    jobs = [submit(mv) for _ in range(6)]
    await until(lambda: h.launcher.spawned[0].held)
    h.sup.autoscale()
    assert h.sup.record(mv).target == 1                     # deep, but not for long enough
    for target in (2, 3):
        h.clock.advance(UP_DELAY)
        h.sup.autoscale()
        assert h.sup.record(mv).target == target
        h.sup.reconcile()
        await ready(h, mv, target)
    h.clock.advance(UP_DELAY * 5)
    h.sup.autoscale()
    assert h.sup.record(mv).target == 3                     # never above max

    h.launcher.hold = False
    for worker in h.launcher.spawned:
        worker.hold = False
        worker.answer()
    for job in jobs:
        assert (await outcome(job))[0] == "final"
    h.sup.autoscale()
    assert h.sup.record(mv).target == 3                     # idle, but not for long enough
    for target in (2, 1):
        h.clock.advance(DOWN_DELAY)
        h.sup.autoscale()
        assert h.sup.record(mv).target == target
        h.sup.reconcile()
        await until(lambda: len(h.handles(mv)) == target)
    h.clock.advance(DOWN_DELAY * 5)
    h.sup.autoscale()
    assert h.sup.record(mv).target == 1                     # never below min
    assert h.autoscale_events(mv, "up") == 2
    assert h.autoscale_events(mv, "down") == 2


# ---- recycling -----------------------------------------------------------------------------

@scenario
async def test_recycled_worker_stops_only_once_its_replacement_is_ready(h: Harness) -> None:
    mv = h.model(max_requests_per_worker=2)
    scale(h, mv, 1, 1)
    (old,) = await ready(h, mv, 1)
    for _ in range(2):
        assert (await outcome(submit(mv)))[0] == "final"
    await until(lambda: old.retiring)
    h.launcher.behaviour = "no_load"                       # the replacement is slow to load
    h.sup.reconcile()
    (new,) = [x for x in h.handles(mv) if x is not old]
    assert new.state is S.STARTING and old.state is S.READY
    h.sup.reconcile()
    assert old.state is S.READY                            # still serving meanwhile
    assert (await outcome(submit(mv)))[0] == "final"
    h.fake(new).kill(signal.SIGKILL)                      # the replacement failed ...
    await until(lambda: new.state is S.BACKOFF)
    h.sup.reconcile()
    assert old.state is S.READY                            # ... the old one carries on
    h.launcher.behaviour = "ok"
    h.sup.reconcile()
    await until(lambda: any(x.state is S.READY and x is not old for x in h.handles(mv)))
    h.sup.reconcile()
    assert old.state in (S.STOPPING, S.STOPPED)
    await until(lambda: old.state is S.STOPPED)
    assert [x.state for x in h.handles(mv)] == [S.READY]


@scenario
async def test_worker_over_max_rss_is_recycled(h: Harness) -> None:
    mv = h.model(max_worker_rss=100_000)                   # FakeOps reports 123456 bytes
    scale(h, mv, 1, 1)
    (old,) = await ready(h, mv, 1)
    h.sup.check_workers()
    assert old.retiring
    labels = {"model_name": "m", "model_version": "1.0", "worker_id": old.id}
    assert h.metrics.registry.get_sample_value("torchd_worker_rss_bytes", labels) == 123456
    h.sup.reconcile()
    await until(lambda: any(x.state is S.READY and x is not old for x in h.handles(mv)))
    h.sup.reconcile()
    await until(lambda: old.state is S.STOPPED)
    assert h.metrics.registry.get_sample_value("torchd_worker_rss_bytes", labels) is None


@scenario
async def test_a_stop_does_not_wait_for_a_slow_spawn(h: Harness) -> None:
    mv = h.model()
    gate = asyncio.Event()
    real_spawn = h.launcher.spawn

    async def slow_spawn(*args: Any) -> int:     # a zygote still importing torch
        await gate.wait()
        return await real_spawn(*args)

    h.launcher.spawn = slow_spawn  # type: ignore[method-assign]
    scale(h, mv, 1, 1)
    await asyncio.sleep(0.05)
    scale(h, mv, 0, 0)
    await until(lambda: not h.handles(mv), timeout=1)
    assert h.launcher.spawned == [] and h.sup.record(mv).start_failures == 0
