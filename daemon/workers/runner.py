"""One worker's life: spawn, load, serve batches, stop or die.

The runner owns the process and its socket and nothing else. It is given what it needs (a
launcher, process operations, a clock, its settings) and reports each turn of the worker's life
through ``WorkerEvents``, which the Supervisor implements: the Supervisor alone decides what a
turn means (READY, BACKOFF, FAILED, forgotten). Batches are the dispatcher's business
(daemon/models/dispatcher.py); the runner hands it the connection and asks it to stop.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from daemon.errors import InternalServerError, TorchdError
from daemon.models.model_config import compiles
from daemon.osutil import exit_description
from daemon.models.dispatcher import BatchObserver, Dispatcher
from daemon.models.dispatching import WorkerDispatcher
from daemon.models.pipelining import PipelineDispatcher
from daemon.models.stepping import StepDispatcher
from daemon.workers.connection import ConnectionLost, WorkerConnection
from daemon.workers.handle import WorkerHandle
from daemon.workers.launcher import ProcessOps
from daemon.workers.templates import TemplateFailed
from protocol import messages
from protocol.frames import DEFAULT_MAX_FRAME, predict_frame_limit

logger = logging.getLogger(__name__)
SHUTDOWN_GRACE = 3.0      # seconds between SHUTDOWN and SIGTERM, and SIGTERM and SIGKILL
EXIT_READ_GRACE = 1.0     # seconds to read what a worker sent before it exited
OOM_EVENTS = Path("/sys/fs/cgroup/memory.events")


class WorkerEvents(Protocol):
    """What a runner reports; each call is one turn of a worker's life."""

    def process_started(self, handle: WorkerHandle, pid: int) -> None: ...
    def became_ready(self, handle: WorkerHandle) -> None: ...
    def start_failed(self, handle: WorkerHandle, error: str) -> None: ...
    def died(self, handle: WorkerHandle, reason: str) -> None: ...
    def stopped(self, handle: WorkerHandle) -> None: ...
    def served_enough(self, handle: WorkerHandle) -> None: ...   # max_requests_per_worker


@dataclass
class RunnerSettings:
    runtime_dir: Path        # where worker sockets are made
    max_frame: int           # largest frame (max_response_size)
    server_version: str
    service_envelope: str | None = None   # TorchServe's service_envelope, for every model
    max_request: int = DEFAULT_MAX_FRAME     # max_request_size: the largest body of a request
    sequence_headers: dict[str, str] | None = None   # config ts_header_key_sequence_*
    ipex_enable: bool = False                        # config ipex_enable, for BaseHandler
    # the handler metrics the metrics configuration declares (daemon/metrics/spec.py)
    model_metrics: list[dict[str, Any]] = field(default_factory=list)


class StartFailure(Exception):
    pass


class WorkerRunner:
    def __init__(self, launcher: Any, ops: ProcessOps, clock: Callable[[], float],
                 settings: RunnerSettings, events: WorkerEvents,
                 observer: BatchObserver | None = None) -> None:
        self.launcher = launcher
        self.ops = ops
        self.clock = clock
        self.settings = settings
        self.events = events
        self.observer = observer

    async def run(self, handle: WorkerHandle) -> None:
        try:
            conn = await self._start(handle)
        except StartFailure as exc:
            await self._terminate(handle)
            self.events.start_failed(handle, str(exc))
            return
        except asyncio.CancelledError:
            await self._terminate(handle)
            raise
        except Exception as exc:
            # Anything unforeseen (say, a LOAD that cannot be encoded) is still a start failure:
            # the worker must not stay STARTING forever.
            logger.exception("worker %s failed to start", handle.id)
            await self._terminate(handle)
            self.events.start_failed(handle, f"{type(exc).__name__}: {exc}")
            return
        if handle.stop_requested.is_set():
            await self._shutdown(handle)
            self.events.stopped(handle)
            return
        dispatcher = handle.dispatcher = self._dispatcher(handle, conn)
        self.events.became_ready(handle)
        reason = await self._serve(handle, dispatcher)
        if reason is None:
            await self._shutdown(handle)
            self.events.stopped(handle)
        else:
            await self._terminate(handle)
            await exit_report(handle.pid, handle.exited)
            self.events.died(handle, handle.kill_reason or reason)

    # ---- start -----------------------------------------------------------------------------

    async def _start(self, handle: WorkerHandle) -> WorkerConnection:
        """The worker's connection, once its handler has loaded."""
        mv = handle.mv
        timeout = float(mv.settings.startup_timeout)
        if timeout <= 0:
            # TorchServe's workers cannot load in no time either: its register answers 500
            raise StartFailure(f"Worker did not load the model within {timeout:g} seconds "
                               "(startup_timeout)")
        path = self.settings.runtime_dir / f"w{handle.id}.sock"
        path.unlink(missing_ok=True)
        loop = asyncio.get_running_loop()
        connected: asyncio.Future = loop.create_future()

        def accept() -> WorkerConnection:
            conn = WorkerConnection(self.settings.max_frame)
            if connected.done():
                conn.close()   # one worker, one connection: a second one is not ours
            else:
                connected.set_result(conn)
            return conn

        server = await loop.create_unix_server(accept, str(path))
        handle.oom_baseline = _oom_kills()
        try:
            # Raced against a stop: a spawn can wait long for a zygote still importing torch.
            spawn = asyncio.ensure_future(self._spawn(handle, str(path)))
            try:
                pid = await self._until(spawn, handle, timeout, "spawn")
            except StartFailure:
                raise
            except TemplateFailed as exc:   # the template's load failed: so does this one's
                raise StartFailure(str(exc)) from exc
            except Exception as exc:
                raise StartFailure(f"could not spawn a worker process: {exc}") from exc
            self.events.process_started(handle, pid)
            await self._until(connected, handle, timeout, "connect")
        except BaseException:
            # A process that connected for a start given up (stopped while its spawn was
            # under way) would wait on this connection forever: it ends with it.
            if connected.done() and not connected.cancelled():
                connected.result().close()
            raise
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
        records = loaded.get("metrics")   # what its initialize recorded (TorchServe shows them)
        if records and self.observer is not None:
            self.observer.record_handler_metrics(handle.mv.name, handle.mv.version, records)
        return conn

    async def _spawn(self, handle: WorkerHandle, path: str) -> int:
        """The worker's process: forked from its version's template (which holds the loaded
        model) when it has one that can, else by the launcher."""
        if handle.template is not None:
            pid = await handle.template.fork(handle.id, path, handle.title)
            if pid is not None:
                handle.template_pid = handle.template.pid
                return pid
            if handle.stop_requested.is_set():   # the template was stopped with it
                raise StartFailure("stopped while starting")
        deps = str(handle.mv.deps_dir) if handle.mv.deps_dir else None
        if compiles(handle.mv.yaml_config):
            return await self.launcher.spawn(handle.id, path, handle.title, deps,
                                             handle.threads, compiler=True)
        return await self.launcher.spawn(handle.id, path, handle.title, deps, handle.threads)

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
        if step == "spawn":
            self.launcher.spawn_overdue()   # a stuck zygote is replaced, not asked again
        raise StartFailure(f"worker did not {step} within {timeout:g} s (startup_timeout)")

    def _load_message(self, handle: WorkerHandle) -> dict:
        return load_message(handle.mv, self.settings, handle.threads, handle.gpu)

    @staticmethod
    def _exit_cause(handle: WorkerHandle, exc: BaseException | None) -> str:
        if handle.returncode is not None:
            return f"worker process {exit_description(handle.returncode)}"
        return f"worker connection lost: {exc}" if exc else "worker process exited"

    # ---- serve -----------------------------------------------------------------------------

    def _dispatcher(self, handle: WorkerHandle, conn: WorkerConnection) -> WorkerDispatcher:
        def after_batch() -> None:
            limit = handle.mv.settings.max_requests_per_worker
            if limit and dispatcher.served >= limit:
                self.events.served_enough(handle)

        kind = _DISPATCHERS[serving_mode(handle.mv.settings)]
        dispatcher = kind(handle.mv, conn, self.clock,
                          death_error=lambda: self._death_error(handle),
                          observer=self.observer, after_batch=after_batch)
        return dispatcher

    async def _serve(self, handle: WorkerHandle, dispatcher: WorkerDispatcher) -> str | None:
        """The dispatcher's loop, stopped when the Supervisor asks this worker to stop."""
        stop = asyncio.ensure_future(handle.stop_requested.wait())
        stop.add_done_callback(lambda _: dispatcher.stop(handle.stop_deadline or self.clock()))
        try:
            return await dispatcher.serve()
        finally:
            stop.cancel()

    def _death_error(self, handle: WorkerHandle) -> TorchdError:
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
        """Kill a hung worker; its run notices the lost socket and reports the death with
        ``reason`` (the lost socket alone would say nothing about why)."""
        handle.kill_reason = reason
        self._signal(handle, signal.SIGKILL)
        if handle.conn is not None:
            handle.conn.close()

    def _close(self, handle: WorkerHandle) -> None:
        """After the process: its connection, and what its handler started (its group)."""
        if handle.conn is not None:
            handle.conn.close()
        if handle.pid is not None:
            self.ops.end_group(handle.pid)

    def _signal(self, handle: WorkerHandle, sig: int) -> None:
        if handle.pid is not None and not handle.exited.is_set():
            self.ops.signal(handle.pid, sig)

    async def _wait_exit(self, handle: WorkerHandle, timeout: float) -> bool:
        """True once the process is gone (reported by its launcher, or seen gone/zombie)."""
        return await wait_for_exit(handle.pid, handle.exited, self.ops, self.launcher, timeout)


def load_message(mv: Any, settings: RunnerSettings, threads: int, gpu: int | None) -> dict:
    """The LOAD frame of a worker of ``mv`` (or of its template: daemon/workers/templates.py)."""
    return messages.load(model_dir=mv.model_dir, model_name=mv.name, handler=mv.handler,
                         manifest=mv.manifest, batch_size=mv.settings.batch_size,
                         model_yaml_config=mv.yaml_config,
                         server_version=settings.server_version,
                         max_response_size=settings.max_frame, threads=threads, gpu_id=gpu,
                         service_envelope=settings.service_envelope,
                         max_request_frame=predict_frame_limit(
                             mv.settings.batch_size, settings.max_request),
                         mode=serving_mode(mv.settings),
                         sequence_headers=settings.sequence_headers,
                         compile_cache_dir=(str(mv.compile_cache_dir)
                                            if mv.compile_cache_dir else None),
                         ipex_enable=settings.ipex_enable,
                         model_metrics=settings.model_metrics)


async def wait_for_exit(pid: int | None, exited: asyncio.Event, ops: ProcessOps, launcher: Any,
                        timeout: float) -> bool:
    """True once the process is gone (reported by whoever forked it, or seen gone/zombie and
    collected: an orphan re-parented to the daemon is the daemon's to reap)."""
    if pid is None:
        return True
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not exited.is_set():
        if not ops.alive(pid) and launcher.reap(pid):
            return True
        if loop.time() >= end:
            return False
        try:
            await asyncio.wait_for(exited.wait(), 0.05)
        except asyncio.TimeoutError:
            pass
    return True


async def exit_report(pid: int | None, exited: asyncio.Event) -> None:
    """A moment for a process's exit status, once it is gone, so that its death is logged with
    its cause (killed by SIGKILL, say): the status comes from the zygote over another socket,
    and the process's own broken socket usually overtakes it, by milliseconds."""
    if pid is not None and not exited.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(exited.wait(), EXIT_READ_GRACE)


def _oom_kills() -> int:
    try:
        for line in OOM_EVENTS.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def serving_mode(settings: Any) -> str:
    """How the version's workers take requests (LOAD's ``mode``)."""
    if settings.continuous_batching:
        return messages.MODE_CONTINUOUS
    if settings.async_communication:
        return messages.MODE_ASYNC
    return messages.MODE_BATCH


_DISPATCHERS: dict[str, Any] = {messages.MODE_BATCH: Dispatcher,
                                messages.MODE_CONTINUOUS: StepDispatcher,
                                messages.MODE_ASYNC: PipelineDispatcher}
