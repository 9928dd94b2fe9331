"""preloadModel in the Supervisor: a version's template started when it needs workers, its
workers forked from it, a dead template replaced (with backoff), stopped at 0 workers and at
unregister, a failed load failing the workers' starts with its cause, an unsafe one ending
preloading for the version, and where preloading does not apply (GPUs, exec spawn).

Same fakes as the other Supervisor tests (supervisor_harness.py), plus a fake template: a task
speaking the template's side of the protocol (HELLO, PRELOADED, then SPAWN -> SPAWNED) over the
real socket to the real TemplateRunner.
"""
from __future__ import annotations

import asyncio
import itertools
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.models.registry import ModelVersion
from daemon.workers.records import VersionRecord
from daemon.workers.states import RestartPolicy
from daemon.workers.templates import TemplateHandle, TemplateState, preload_refusal
from protocol import messages
from protocol.streams import read_frame, write_frame
from tests.daemon.workers.supervisor_harness import (TEST_TIMEOUT, FakeLauncher, FakeProcess,
                                                     Harness, S, ready, scale, until)
from tests.support.gpus import fake_inventory

T = TemplateState
UNSAFE = "the handler's initialize left 1 more thread(s) running (2 in all)"


# ---- pure parts ----------------------------------------------------------------------------

@pytest.mark.parametrize("wanted, on_gpu, forks, own_python, refused", [
    (False, True, False, True, None),          # not asked for: nothing to refuse
    (True, False, True, False, None),          # a CPU model forked by the zygote
    (True, True, True, False, "GPUs"),
    (True, False, True, True, "install_py_dep_per_model"),
    (True, False, False, False, "worker_spawn=exec"),
])
def test_where_preloading_applies(wanted: bool, on_gpu: bool, forks: bool, own_python: bool,
                                  refused: str | None) -> None:
    reason = preload_refusal(wanted, on_gpu, forks, own_python)
    assert (reason is None) == (refused is None)
    assert refused is None or refused in str(reason)


def test_template_states_settle_once_and_end_stopped() -> None:
    template = TemplateHandle(id="1", mv=None)  # type: ignore[arg-type]
    assert template.live and not template.settled.is_set()
    template.move(T.READY)
    assert template.settled.is_set() and template.live
    with pytest.raises(RuntimeError):
        template.move(T.FAILED)
    template.move(T.STOPPING)
    template.move(T.STOPPED)
    assert not template.live


def test_templates_that_end_unasked_back_off_until_one_proves_itself() -> None:
    record, policy = VersionRecord(target=1), RestartPolicy(reset_after=30)
    assert [record.template_ended(None, policy, 100.0) for _ in range(4)] == [0, 1, 2, 4]
    assert record.template_retry_at == 104.0
    assert record.template_ended(5.0, policy, 200.0) == 8           # READY briefly: no proof
    assert record.template_ended(31.0, policy, 300.0) == 0          # READY long enough


# ---- a fake template -----------------------------------------------------------------------

class FakeTemplate(FakeProcess):
    """Stands in for a template process. ``behaviour``: ok | fail | unsafe | hang (loads for
    ever)."""

    def __init__(self, launcher: TemplateLauncher, pid: int, socket_path: str, behaviour: str,
                 load: dict) -> None:
        super().__init__(launcher, pid)
        self.socket_path, self.behaviour, self.load = socket_path, behaviour, load

    async def run(self) -> None:
        reader, self.writer = await asyncio.open_unix_connection(self.socket_path)
        write_frame(self.writer, messages.hello(self.pid, "t"))
        if self.behaviour == "fail":
            write_frame(self.writer, messages.preloaded(False, "ValueError: no weights here"))
            return self.exit(1)
        if self.behaviour == "unsafe":
            write_frame(self.writer, messages.preloaded(True, None, 0.1, unsafe=UNSAFE))
            return self.exit(0)
        if self.behaviour == "hang":
            await asyncio.Event().wait()   # until killed
        write_frame(self.writer, messages.preloaded(True, None, 0.1))
        while (message := await read_frame(reader)) is not None:
            if message["kind"] == messages.SPAWN:
                pid = await self.launcher.fork(message["worker_id"], message["socket_path"],
                                               self.pid)
                write_frame(self.writer, messages.spawned(message["worker_id"], pid))
        self.exit(0)


class TemplateLauncher(FakeLauncher):
    """The fake zygote: forks fake workers, and fake templates that fork fake workers."""

    forks_templates = True

    def __init__(self, on_exit: Callable[[int, int], None]) -> None:
        super().__init__(on_exit)
        self.template_behaviour = "ok"
        self.templates: list[FakeTemplate] = []
        self.parent: dict[int, int] = {}            # worker pid -> the template that forked it
        self._template_pids = itertools.count(30000)

    async def spawn_template(self, template_id: str, socket_path: str, title: str,
                             load: dict) -> int:
        template = FakeTemplate(self, next(self._template_pids), socket_path,
                                self.template_behaviour, load)
        self.templates.append(template)
        self.by_pid[template.pid] = template   # type: ignore[assignment]  (signals, liveness)
        template.task = asyncio.get_running_loop().create_task(template.run())
        return template.pid

    async def fork(self, worker_id: str, socket_path: str, template_pid: int) -> int:
        pid = await self.spawn(worker_id, socket_path, "")
        self.parent[pid] = template_pid
        return pid


class TemplateHarness(Harness):
    def _launcher(self, on_exit: Callable[[int, int], None]) -> FakeLauncher:
        self.launcher = TemplateLauncher(on_exit)
        return self.launcher

    @property
    def fakes(self) -> TemplateLauncher:
        assert isinstance(self.launcher, TemplateLauncher)
        return self.launcher


def with_templates(fn: Callable[..., Any] | None = None, gpus: int = 0) -> Any:
    """Run an async test body with a TemplateHarness (``gpus`` fake GPUs)."""
    def decorate(body: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(runtime_dir: Path) -> None:
            async def main() -> None:
                inventory = fake_inventory(gpus)[0] if gpus else None
                h = TemplateHarness(runtime_dir, gpus=inventory)
                try:
                    await body(h)
                finally:
                    await h.sup.close(0)
            asyncio.run(asyncio.wait_for(main(), TEST_TIMEOUT))
        wrapper.__name__, wrapper.__doc__ = body.__name__, body.__doc__
        return wrapper
    return decorate(fn) if fn is not None else decorate


@pytest.fixture
def runtime_dir():
    path = Path(tempfile.mkdtemp(prefix="svt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def template_ready(h: TemplateHarness, mv: ModelVersion,
                         other_than: TemplateHandle | None = None) -> TemplateHandle:
    def current() -> TemplateHandle | None:
        template = h.sup.templates.get(mv)
        ok = template is not None and template is not other_than and template.state is T.READY
        return template if ok else None
    return await until(current)


# ---- the Supervisor ------------------------------------------------------------------------

@with_templates
async def test_a_preloading_version_s_workers_are_forked_from_its_template(
        h: TemplateHarness) -> None:
    mv = h.model(preload_model=True)
    scale(h, mv, 3, 3)
    handles = await ready(h, mv, 3)
    template = await template_ready(h, mv)
    (fake,) = h.fakes.templates
    assert template.pid == fake.pid and (fake.load["threads"], fake.load["gpu_id"]) == (1, None)
    assert {h.fakes.parent[handle.pid] for handle in handles} == {fake.pid}
    assert all(handle.template_pid == fake.pid for handle in handles)
    assert all(row["template"] == fake.pid for row in h.sup.describe_workers(mv))
    assert h.sup.describe_template(mv) == {"template": {"pid": fake.pid, "status": "READY",
                                                        "memoryUsage": 123456}}
    plain = h.model("plain")
    scale(h, plain, 1, 1)
    (worker,) = await ready(h, plain, 1)
    assert worker.template_pid is None and h.sup.describe_template(plain) == {}
    assert len(h.fakes.templates) == 1


@with_templates
async def test_a_dead_template_is_replaced_with_backoff_and_its_workers_serve_on(
        h: TemplateHarness) -> None:
    mv = h.model(preload_model=True)
    scale(h, mv, 2, 2)
    workers = await ready(h, mv, 2)
    first = await template_ready(h, mv)
    h.fakes.templates[0].kill(signal.SIGKILL)
    await until(lambda: mv not in h.sup.templates)
    h.sup.reconcile()
    second = await template_ready(h, mv, other_than=first)   # at once: the first death
    assert first.returncode == -signal.SIGKILL and first.state is T.STOPPED
    assert all(w.state is S.READY for w in workers) and h.handles(mv, S.READY) == workers
    h.fakes.templates[1].kill(signal.SIGKILL)
    await until(lambda: mv not in h.sup.templates)
    h.sup.reconcile()
    assert mv not in h.sup.templates          # the second death in a row waits 1 s
    h.clock.advance(1)
    h.sup.reconcile()
    await template_ready(h, mv, other_than=second)
    assert len(h.fakes.templates) == 3


@with_templates
async def test_zero_workers_and_unregister_stop_the_template(h: TemplateHarness) -> None:
    mv = h.model(preload_model=True)
    scale(h, mv, 2, 2)
    await ready(h, mv, 2)
    first = await template_ready(h, mv)
    scale(h, mv, 1, 1)
    await ready(h, mv, 1)
    assert h.sup.templates[mv] is first
    scale(h, mv, 0, 0)
    await until(lambda: mv not in h.sup.templates and not h.handles(mv))
    assert first.state is T.STOPPED and not h.fakes.templates[0].alive
    scale(h, mv, 1, 1)
    await ready(h, mv, 1)
    second = await template_ready(h, mv, other_than=first)
    h.registry.remove(mv)
    await h.sup.drain(mv, 1)
    assert second.state is T.STOPPED and not any(t.alive for t in h.fakes.templates)
    assert h.sup.templates == {}


@with_templates
async def test_a_failed_load_fails_the_workers_starts_with_its_cause(h: TemplateHarness) -> None:
    h.fakes.template_behaviour = "fail"
    mv = h.model(preload_model=True)
    scale(h, mv, 2, 2)
    outcome = await h.sup.wait_for_workers(mv, 5)
    assert outcome.ready == 0 and outcome.error == "ValueError: no weights here"
    assert {w.last_error for w in h.sup.handles(mv)} == {"ValueError: no weights here"}
    assert h.fakes.spawned == []              # no worker process was made for nothing
    await until(lambda: mv not in h.sup.templates)


@with_templates
async def test_an_unsafe_template_ends_preloading_for_its_version(h: TemplateHarness) -> None:
    h.fakes.template_behaviour = "unsafe"
    mv = h.model(preload_model=True)
    scale(h, mv, 2, 2)
    workers = await ready(h, mv, 2)
    assert all(w.template_pid is None for w in workers) and not h.fakes.parent
    assert h.sup.record(mv).preload_off == UNSAFE
    await until(lambda: mv not in h.sup.templates)
    h.fake(workers[0]).kill(signal.SIGKILL)
    await until(lambda: workers[0].state is S.BACKOFF)
    h.sup.reconcile()                         # its replacement
    await until(lambda: len(h.handles(mv, S.READY)) == 2 and workers[0] not in h.handles(mv))
    assert len(h.fakes.templates) == 1        # no second try


@with_templates
async def test_a_template_loading_past_startup_timeout_is_killed(h: TemplateHarness) -> None:
    h.fakes.template_behaviour = "hang"
    mv = h.model(preload_model=True, startup_timeout=1)
    scale(h, mv, 1, 1)
    outcome = await h.sup.wait_for_workers(mv, 5)
    assert outcome.ready == 0 and "within 1 s (startup_timeout)" in str(outcome.error)
    (fake,) = h.fakes.templates
    await until(lambda: not fake.alive and mv not in h.sup.templates, 10)
    assert h.ops.signals == [(fake.pid, signal.SIGTERM)]   # at once: nobody will fork from it


@with_templates
async def test_a_template_stopped_while_it_loads_is_terminated_at_once(
        h: TemplateHarness) -> None:
    h.fakes.template_behaviour = "hang"
    mv = h.model(preload_model=True)
    scale(h, mv, 2, 2)
    await until(lambda: h.fakes.templates and mv in h.sup.templates
                and h.sup.templates[mv].pid is not None)
    scale(h, mv, 0, 0)
    (fake,) = h.fakes.templates
    await until(lambda: not fake.alive and mv not in h.sup.templates and not h.handles(mv))
    assert h.ops.signals == [(fake.pid, signal.SIGTERM)] and h.fakes.spawned == []


@with_templates(gpus=1)
async def test_gpu_workers_are_never_forked_from_a_template(h: TemplateHarness) -> None:
    on_gpu = h.model("g", preload_model=True)
    on_cpu = h.model("c", preload_model=True, device_type="cpu")
    scale(h, on_gpu, 1, 1)
    scale(h, on_cpu, 1, 1)
    await ready(h, on_gpu, 1)
    await ready(h, on_cpu, 1)
    assert "GPUs" in str(h.sup.record(on_gpu).preload_off) and on_gpu not in h.sup.templates
    assert (await template_ready(h, on_cpu)).mv is on_cpu
