"""One template's life: forked by the zygote, load, fork workers, stop or die.

Like a WorkerRunner, the runner owns the template's process and socket and nothing else, and
reports each turn of its life through ``TemplateEvents``, which the Supervisor implements: the
Supervisor decides what a turn means (READY, a fall back to per-worker loading, a restart).

The socket carries what the zygote's does (daemon/workers/launcher.py): SPAWN out, SPAWNED and
EXITED in, after the template's HELLO and PRELOADED. The template reaps the workers it forks and
reports their exits here; once it is gone they are the daemon's children (it is their
subreaper), which the worker runners collect.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from typing import Any, Protocol

from daemon.osutil import exit_description
from daemon.workers.launcher import ExitCallback, ProcessOps, dispatch_fork_reply
from daemon.workers.runner import (EXIT_READ_GRACE, SHUTDOWN_GRACE, RunnerSettings, exit_report,
                                   load_message, wait_for_exit)
from daemon.workers.templates import TemplateHandle, TemplateState
from protocol import messages
from protocol.frames import ProtocolError
from protocol.streams import read_frame, write_frame

logger = logging.getLogger(__name__)
TEMPLATE_THREADS = 1    # intra-op threads while it loads: at::parallel_for runs inline, no pool


class TemplateEvents(Protocol):
    """What a template runner reports; each call is one turn of a template's life."""

    def template_process_started(self, template: TemplateHandle, pid: int) -> None: ...
    def template_settled(self, template: TemplateHandle, state: TemplateState,
                         detail: str | None) -> None: ...
    def template_exited(self, template: TemplateHandle) -> None: ...


class TemplateStartFailure(Exception):
    def __init__(self, cause: str, answered: bool = False) -> None:
        super().__init__(cause)
        self.answered = answered   # the template said so itself (and exits by itself)


class TemplateLink:
    """The daemon's side of a READY template's socket: SPAWN out, SPAWNED and EXITED in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_exit: ExitCallback, daemon_pid: int) -> None:
        self.reader = reader
        self.writer = writer
        self.on_exit = on_exit
        self.daemon_pid = daemon_pid
        self.lost: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending: dict[str, asyncio.Future] = {}

    async def read(self) -> None:
        """Until the template hangs up (or dies); then every pending spawn fails."""
        try:
            while (message := await read_frame(self.reader)) is not None:
                self._dispatch(message)
        except (OSError, ProtocolError) as exc:
            logger.warning("template connection broken: %s", exc)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RuntimeError("the template went away"))
        self._pending.clear()
        if not self.lost.done():
            self.lost.set_result(None)

    def _dispatch(self, message: dict[str, Any]) -> None:
        dispatch_fork_reply(message, self._pending, self.on_exit)

    async def spawn(self, worker_id: str, socket_path: str, title: str) -> int:
        """A worker forked from the template: its pid (RuntimeError when it cannot fork)."""
        if self.lost.done():
            raise RuntimeError("the template went away")
        future = asyncio.get_running_loop().create_future()
        self._pending[worker_id] = future
        write_frame(self.writer, messages.spawn(worker_id, socket_path, title, self.daemon_pid))
        await self.writer.drain()
        return await future

    def close(self) -> None:
        """EOF: the template exits by itself (its workers keep serving)."""
        self.writer.close()


class TemplateRunner:
    def __init__(self, launcher: Any, ops: ProcessOps, clock: Callable[[], float],
                 settings: RunnerSettings, events: TemplateEvents, on_exit: ExitCallback,
                 daemon_pid: int) -> None:
        self.launcher = launcher
        self.ops = ops
        self.clock = clock
        self.settings = settings
        self.events = events
        self.on_exit = on_exit        # where the exits of the workers it forks are reported
        self.daemon_pid = daemon_pid

    async def run(self, template: TemplateHandle) -> None:
        link: TemplateLink | None = None
        reading: asyncio.Task | None = None
        answered = False
        try:
            link = await self._start(template)
            if link is not None:
                template.link = link
                reading = asyncio.ensure_future(link.read())
                self.events.template_settled(template, TemplateState.READY, None)
                await self._serve(template, link)
        except TemplateStartFailure as exc:
            answered = exc.answered
            if not template.stop_requested.is_set():
                self.events.template_settled(template, TemplateState.FAILED, str(exc))
        except Exception as exc:   # unforeseen: still settle, so that no worker waits for ever
            logger.exception("template %s failed", template.id)
            self.events.template_settled(template, TemplateState.FAILED,
                                         f"{type(exc).__name__}: {exc}")
        finally:
            await self._end(template, link, reading,
                            answered or template.state is TemplateState.FALLBACK)
        self.events.template_exited(template)

    # ---- start -----------------------------------------------------------------------------

    async def _start(self, template: TemplateHandle) -> TemplateLink | None:
        """Its link once its load has succeeded; None when it fell back (reported here)."""
        timeout = float(template.mv.settings.startup_timeout)
        deadline = self.clock() + timeout
        path = self.settings.runtime_dir / f"{template.id}.sock"
        path.unlink(missing_ok=True)
        connected: asyncio.Future = asyncio.get_running_loop().create_future()

        def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if connected.done():
                writer.close()   # one template, one connection: a second one is not ours
            else:
                connected.set_result((reader, writer))

        server = await asyncio.start_unix_server(accept, str(path))
        try:
            load = load_message(template.mv, self.settings, TEMPLATE_THREADS, None)
            spawn = self.launcher.spawn_template(template.id, str(path), template.title, load)
            try:
                pid = await self._until(asyncio.ensure_future(spawn), template, deadline,
                                        "spawn")
            except (OSError, RuntimeError, asyncio.TimeoutError) as exc:   # the zygote's
                pid, why = None, f"the zygote could not fork it: {exc}"
            else:
                why = "no zygote to fork it from"
            if pid is None:   # not the model's fault: its workers load it themselves this time
                self.events.template_settled(template, TemplateState.FALLBACK, why)
                return None
            self.events.template_process_started(template, pid)
            reader, writer = await self._until(connected, template, deadline, "connect")
        finally:
            server.close()
            path.unlink(missing_ok=True)
        try:
            await self._until(asyncio.ensure_future(read_frame(reader)), template, deadline,
                              "connect")                                    # HELLO
            reply = await self._until(asyncio.ensure_future(read_frame(reader)), template,
                                      deadline, "load")
        except (OSError, ProtocolError) as exc:
            writer.close()
            raise TemplateStartFailure(f"template connection lost: {exc}") from exc
        except BaseException:
            writer.close()
            raise
        return self._loaded(template, reply, reader, writer)

    def _loaded(self, template: TemplateHandle, reply: dict[str, Any] | None,
                reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> TemplateLink | None:
        if reply is None or reply.get("kind") != messages.PRELOADED:
            writer.close()
            raise TemplateStartFailure(self._exit_cause(template) if reply is None
                                       else f"the template said {reply.get('kind')!r}")
        template.load_seconds = float(reply.get("load_seconds") or 0.0)
        if not reply.get("ok"):
            writer.close()
            raise TemplateStartFailure(reply.get("error") or "the handler failed to load",
                                       answered=True)
        if reply.get("unsafe"):
            writer.close()
            self.events.template_settled(template, TemplateState.FALLBACK, reply["unsafe"])
            return None
        return TemplateLink(reader, writer, self.on_exit, self.daemon_pid)

    async def _until(self, future: asyncio.Future, template: TemplateHandle, deadline: float,
                     step: str) -> Any:
        """Await ``future`` unless the process exits, a stop is asked for, or time runs out."""
        exited = asyncio.ensure_future(template.exited.wait())
        stop = asyncio.ensure_future(template.stop_requested.wait())
        timeout = max(0.0, deadline - self.clock())
        try:
            await asyncio.wait({future, exited, stop}, timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
            if not future.done() and template.exited.is_set():
                # its exit (reported by the zygote, on another socket) can overtake what it
                # wrote before dying, such as a PRELOADED carrying the load error
                await asyncio.wait({future}, timeout=EXIT_READ_GRACE)
        finally:
            exited.cancel()
            stop.cancel()
        if future.done():
            return future.result()
        future.cancel()
        if template.stop_requested.is_set():
            raise TemplateStartFailure("stopped while starting")
        if template.exited.is_set():
            raise TemplateStartFailure(self._exit_cause(template))
        raise TemplateStartFailure(f"the template did not {step} within "
                                   f"{template.mv.settings.startup_timeout:g} s "
                                   "(startup_timeout)")

    @staticmethod
    def _exit_cause(template: TemplateHandle) -> str:
        if template.returncode is not None:
            return f"template process {exit_description(template.returncode)}"
        return "template process exited"

    # ---- serve and stop --------------------------------------------------------------------

    async def _serve(self, template: TemplateHandle, link: TemplateLink) -> None:
        """Until it dies or the Supervisor asks it to stop."""
        exited = asyncio.ensure_future(template.exited.wait())
        stop = asyncio.ensure_future(template.stop_requested.wait())
        try:
            await asyncio.wait({link.lost, exited, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
            stop.cancel()

    async def _end(self, template: TemplateHandle, link: TemplateLink | None,
                   reading: asyncio.Task | None, answered: bool) -> None:
        """The process gone. One that loaded (READY: its link is closed now) or ``answered``
        that it will not fork exits by itself, given a grace period; one still loading (stopped,
        out of time) is terminated at once: nobody will fork from it. SIGKILL if it lingers."""
        if link is not None:
            link.close()    # EOF: a template that still runs exits by itself
        if link is None and not answered:
            self._signal(template, signal.SIGTERM)
        if not await self._wait_exit(template, SHUTDOWN_GRACE):
            self._signal(template, signal.SIGTERM if link is not None or answered
                         else signal.SIGKILL)
            if not await self._wait_exit(template, SHUTDOWN_GRACE):
                self._signal(template, signal.SIGKILL)
                await self._wait_exit(template, SHUTDOWN_GRACE)
        await exit_report(template.pid, template.exited)
        if template.pid is not None:
            self.ops.end_group(template.pid)   # what its initialize started, if anything
        if reading is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(reading), EXIT_READ_GRACE)
            reading.cancel()

    def _signal(self, template: TemplateHandle, sig: int) -> None:
        if template.pid is not None and not template.exited.is_set():
            self.ops.signal(template.pid, sig)

    async def _wait_exit(self, template: TemplateHandle, timeout: float) -> bool:
        return await wait_for_exit(template.pid, template.exited, self.ops, self.launcher,
                                   timeout)
