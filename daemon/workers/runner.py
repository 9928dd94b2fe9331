"""One worker's life, driven by the Supervisor: spawn, load, serve batches, stop or die.

Every state change goes back through the Supervisor (``became_ready``, ``start_failed``,
``died``, ``stopped``); this module only runs the process and its socket.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.errors import (
    InternalServerError,
    RequestTimeout,
    ServiceUnavailable,
    TorchdError,
)
from daemon.models.queue import Job
from daemon.workers.states import WorkerState
from daemon.workers.connection import ConnectionLost, WorkerConnection
from protocol import messages

if TYPE_CHECKING:
    from daemon.workers.supervisor import Supervisor
    from daemon.workers.handle import WorkerHandle

logger = logging.getLogger(__name__)
S = WorkerState
SHUTDOWN_GRACE = 3.0      # seconds between SHUTDOWN and SIGTERM, and SIGTERM and SIGKILL
EXIT_READ_GRACE = 1.0     # seconds to read what a worker sent before it exited
OOM_EVENTS = Path("/sys/fs/cgroup/memory.events")


class StartFailure(Exception):
    pass


class WorkerLifecycle:
    def __init__(self, supervisor: Supervisor) -> None:
        self.sup = supervisor
        self._batch_ids = itertools.count(1)

    async def run(self, handle: WorkerHandle) -> None:
        try:
            await self._start(handle)
        except StartFailure as exc:
            await self._terminate(handle)
            self.sup.start_failed(handle, str(exc))
            return
        except asyncio.CancelledError:
            await self._terminate(handle)
            raise
        except Exception as exc:
            # Anything unforeseen (say, a LOAD that cannot be encoded) is still a start failure:
            # the worker must not stay STARTING forever.
            logger.exception("worker %s failed to start", handle.id)
            await self._terminate(handle)
            self.sup.start_failed(handle, f"{type(exc).__name__}: {exc}")
            return
        if handle.state is S.STOPPING:
            await self._shutdown(handle)
            self.sup.stopped(handle)
            return
        self.sup.became_ready(handle)
        reason = await self._serve(handle)
        if reason is None:
            await self._shutdown(handle)
            self.sup.stopped(handle)
        else:
            await self._terminate(handle)
            self.sup.died(handle, handle.kill_reason or reason)

    # ---- start -----------------------------------------------------------------------------

    async def _start(self, handle: WorkerHandle) -> None:
        mv, sup = handle.mv, self.sup
        timeout = float(mv.settings.startup_timeout)
        path = sup.settings.runtime_dir / f"w{handle.id}.sock"
        path.unlink(missing_ok=True)
        loop = asyncio.get_running_loop()
        connected: asyncio.Future = loop.create_future()

        def accept() -> WorkerConnection:
            conn = WorkerConnection(sup.settings.max_frame)
            if connected.done():
                conn.close()   # one worker, one connection: a second one is not ours
            else:
                connected.set_result(conn)
            return conn

        server = await loop.create_unix_server(accept, str(path))
        handle.oom_baseline = _oom_kills()
        try:
            # Raced against a stop: a spawn can wait long for a zygote still importing torch.
            deps = str(mv.deps_dir) if mv.deps_dir else None
            spawn = asyncio.ensure_future(
                sup.launcher.spawn(handle.id, str(path), handle.title, deps))
            try:
                pid = await self._until(spawn, handle, timeout, "spawn")
            except StartFailure:
                raise
            except Exception as exc:
                raise StartFailure(f"could not spawn a worker process: {exc}") from exc
            sup.track_pid(handle, pid)
            await self._until(connected, handle, timeout, "connect")
        finally:
            server.close()
            path.unlink(missing_ok=True)
        conn = handle.conn = connected.result()
        try:
            await conn.handshake(timeout)
            reply = conn.request(self._load_message(handle), messages.LOADED, None)
            loaded = await self._until(asyncio.ensure_future(reply), handle, timeout, "load")
        except (ConnectionLost, OSError, asyncio.TimeoutError) as exc:
            raise StartFailure(self._exit_cause(handle, exc)) from exc
        if not loaded.get("ok"):
            raise StartFailure(loaded.get("error") or "the handler failed to load")

    async def _until(self, future: asyncio.Future, handle: WorkerHandle, timeout: float,
                     step: str):
        """Await ``future`` unless the process exits, a stop is asked for, or time runs out."""
        exited = asyncio.ensure_future(handle.exited.wait())
        stop = asyncio.ensure_future(handle.stop_requested.wait())
        try:
            await asyncio.wait({future, exited, stop}, timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
            stop.cancel()
        if not future.done() and handle.exited.is_set() and handle.conn is not None:
            # The exit report (from the zygote, over another socket) can overtake the last
            # frames the worker wrote before dying, such as a LOADED carrying the load error:
            # read to the socket's end before settling for a bare exit status.
            await asyncio.wait({future, handle.conn.lost}, timeout=EXIT_READ_GRACE)
        if future.done():
            return future.result()
        future.cancel()
        if handle.stop_requested.is_set():
            raise StartFailure("stopped while starting")
        if handle.exited.is_set():
            raise StartFailure(self._exit_cause(handle, None))
        raise StartFailure(f"worker did not {step} within {timeout:g} s (startup_timeout)")

    def _load_message(self, handle: WorkerHandle) -> dict:
        mv = handle.mv
        return messages.load(model_dir=mv.model_dir, model_name=mv.name, handler=mv.handler,
                             manifest=mv.manifest, batch_size=mv.settings.batch_size,
                             model_yaml_config=mv.yaml_config,
                             server_version=self.sup.settings.server_version,
                             max_response_size=self.sup.settings.max_frame)

    @staticmethod
    def _exit_cause(handle: WorkerHandle, exc: BaseException | None) -> str:
        code = handle.returncode
        if code is not None and code < 0:
            return f"worker process killed by signal {-code}"
        if code is not None:
            return f"worker process exited with code {code}"
        return f"worker connection lost: {exc}" if exc else "worker process exited"

    # ---- serve -----------------------------------------------------------------------------

    async def _serve(self, handle: WorkerHandle) -> str | None:
        """Pull batches until asked to stop (None) or the worker is lost (the reason)."""
        conn, queue, settings = handle.conn, handle.mv.queue, handle.mv.settings
        stop = asyncio.ensure_future(handle.stop_requested.wait())
        try:
            while not handle.stop_requested.is_set():
                delay = settings.max_batch_delay / 1000.0
                # Under load the next batch is already queued: take it without a task and a wait.
                batch = queue.take_ready(settings.batch_size, delay)
                if batch is None and not queue.depth:
                    # idle: wait for a job without take_batch's task (the light-load path)
                    await _arrival_or(queue.next_arrival(), conn.lost, stop)
                    if conn.lost.done():
                        return str(conn.lost.result())
                    continue
                if batch is None:
                    take = asyncio.ensure_future(queue.take_batch(settings.batch_size, delay))
                    await asyncio.wait({take, conn.lost, stop},
                                       return_when=asyncio.FIRST_COMPLETED)
                    if not take.done():
                        take.cancel()
                        await asyncio.gather(take, return_exceptions=True)
                        if conn.lost.done():
                            return str(conn.lost.result())
                        continue
                    batch = take.result()
                reason = await self._run_batch(handle, batch, stop)
                if reason is not None:
                    return reason
            return None
        finally:
            stop.cancel()

    async def _run_batch(self, handle: WorkerHandle, batch: list[Job],
                         stop: asyncio.Future) -> str | None:
        sup, mv, conn = self.sup, handle.mv, handle.conn
        now = sup.clock()
        jobs = {job.id: job for job in batch}
        for job in batch:
            job.dispatched_at = now
        handle.batch, handle.idle_since = batch, None
        if sup.metrics is not None:
            sup.metrics.observe_batch(mv.name, mv.version, len(batch))
        try:
            result = conn.start_batch(next(self._batch_ids), [j.request for j in batch],
                                      lambda part: _route_part(jobs, part),
                                      lambda message: _answer(jobs, message))
        except ConnectionLost as exc:
            mv.queue.requeue_front(batch)
            handle.batch = None
            return str(exc)
        deadline = now + mv.settings.response_timeout
        outcome = await self._await_result(handle, result, deadline, stop)
        conn.end_batch()
        handle.batch, handle.idle_since = None, sup.clock()
        handle.served += len(batch)
        if outcome is None:   # the jobs were answered by _answer as the result came in
            limit = mv.settings.max_requests_per_worker
            if limit and handle.served >= limit and not handle.retiring:
                handle.retiring = True
                sup.wake()
            return None
        error, reason = outcome
        for job in batch:
            job.fail(error)
        return reason

    async def _await_result(self, handle: WorkerHandle, result: asyncio.Future, deadline: float,
                            stop: asyncio.Future) -> tuple[TorchdError, str] | None:
        """Wait for the batch's result until its deadline, or the stop deadline once a stop is
        asked for. The task awaits ``result`` itself (a timer fails it at the deadline) rather
        than a wait on several futures: one wake-up fewer per batch on the hot path."""
        sup, mv = self.sup, handle.mv
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None

        def limit() -> float:
            stop_at = handle.stop_deadline
            return deadline if stop_at is None else min(deadline, stop_at)

        def arm(_: object = None) -> None:
            nonlocal timer
            if timer is not None:
                timer.cancel()
            if waited:   # a stop callback that was already scheduled when the wait ended
                return
            remaining = limit() - sup.clock()
            if remaining > 0:
                timer = loop.call_later(remaining, arm)
            elif not result.done():
                result.set_exception(_Expired())

        waited = False
        arm()
        if not stop.done():
            stop.add_done_callback(arm)   # a stop may bring the limit forward
        try:
            await result
            return None
        except _Expired:
            pass
        except Exception as exc:   # the connection was lost: the worker died
            return self._died_error(handle), str(exc)
        finally:
            waited = True
            stop.remove_done_callback(arm)
            if timer is not None:
                timer.cancel()
        handle.conn.close()   # poison: a late answer must never reach the next batch
        if sup.clock() >= deadline:
            timeout = mv.settings.response_timeout
            return (RequestTimeout(f'Model "{mv.name}" version {mv.version} did not answer '
                                   f'within {timeout} s (response_timeout)'),
                    f"response timeout after {timeout} s")
        return (ServiceUnavailable(f'Worker for model "{mv.name}" was stopped before the '
                                   'request finished'), "stop timeout")

    def _died_error(self, handle: WorkerHandle) -> TorchdError:
        # the kernel's OOM killer leaves no mark on the process, only on its cgroup's counter
        if _oom_kills() > handle.oom_baseline:
            return TorchdError("Worker died.", status=507)
        return InternalServerError("Worker died.")

    # ---- stop ------------------------------------------------------------------------------

    async def _shutdown(self, handle: WorkerHandle) -> None:
        """Polite stop: SHUTDOWN frame, then SIGTERM, then SIGKILL."""
        if handle.conn is not None and not handle.conn.lost.done():
            try:
                handle.conn.send(messages.shutdown())
            except ConnectionLost:
                pass
        if not await self._wait_exit(handle, SHUTDOWN_GRACE):
            self._signal(handle, signal.SIGTERM)
            if not await self._wait_exit(handle, SHUTDOWN_GRACE):
                await self._terminate(handle)
        self._close(handle)

    async def _terminate(self, handle: WorkerHandle) -> None:
        self._signal(handle, signal.SIGKILL)
        await self._wait_exit(handle, SHUTDOWN_GRACE)
        self._close(handle)

    def kill(self, handle: WorkerHandle, reason: str) -> None:
        """Kill a hung worker; its lifecycle notices the lost socket and reports the death
        with ``reason`` (the lost socket alone would say nothing about why)."""
        handle.kill_reason = reason
        self._signal(handle, signal.SIGKILL)
        if handle.conn is not None:
            handle.conn.close()

    @staticmethod
    def _close(handle: WorkerHandle) -> None:
        if handle.conn is not None:
            handle.conn.close()

    def _signal(self, handle: WorkerHandle, sig: int) -> None:
        if handle.pid is not None and not handle.exited.is_set():
            self.sup.ops.signal(handle.pid, sig)

    async def _wait_exit(self, handle: WorkerHandle, timeout: float) -> bool:
        """True once the process is gone (reported by its launcher, or seen gone/zombie)."""
        if handle.pid is None:
            return True
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not handle.exited.is_set():
            if not self.sup.ops.alive(handle.pid) and self.sup.launcher.reap(handle.pid):
                return True
            if loop.time() >= end:
                return False
            try:
                await asyncio.wait_for(handle.exited.wait(), 0.05)
            except asyncio.TimeoutError:
                pass
        return True


class _Expired(Exception):
    """A batch's deadline passed before its result came."""


async def _arrival_or(arrival: asyncio.Future, *others: asyncio.Future) -> None:
    """Await ``arrival`` (the queue resolves it), cut short when any of ``others`` is done.

    Awaited directly, a job's arrival wakes the worker's task at once; asyncio.wait would add a
    callback hop and cost twice what the wait itself does."""
    def wake(_: object) -> None:
        if not arrival.done():
            arrival.set_result(None)

    for other in others:
        other.add_done_callback(wake)
    try:
        await arrival
    finally:
        for other in others:
            other.remove_done_callback(wake)


def _answer(jobs: dict[str, Job], result: dict) -> None:
    for response in result.get("responses") or ():
        job = jobs.get(response.get("id"))
        if job is not None:
            job.finish(response)


def _route_part(jobs: dict[str, Job], part: dict) -> None:
    job = jobs.get(part.get("id"))
    if job is not None:
        job.send_part(part)


def _oom_kills() -> int:
    try:
        for line in OOM_EVENTS.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return 0
