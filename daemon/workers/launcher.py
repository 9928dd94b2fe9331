"""How worker processes come to exist: forked by the zygote, or exec-spawned as a fallback.

The daemon never forks itself (it runs an event loop and threads); it asks the zygote, a
process that has imported torch once, to fork workers that share those pages copy-on-write.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import psutil

from daemon.logformat import DIRECT_LINES
from daemon.models.model_config import compiles
from daemon.osutil import pid_gone
from protocol import messages
from protocol.frames import ProtocolError
from protocol.streams import read_frame, write_frame

logger = logging.getLogger(__name__)

ExitCallback = Callable[[int, int], None]   # (pid, returncode; negative = killed by signal)
ZYGOTE_START_TIMEOUT = 60.0


class ProcessOps:
    """What the supervisor asks the OS about a worker process, by pid.

    One object, injected into the Supervisor, so state-machine tests can run without real
    processes (ARCHITECTURE rule 6); together with the launcher it is all the OS it touches.
    """

    def signal(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def end_group(self, pgid: int) -> None:
        """SIGKILL the process group a worker or template led (worker/watch.lead_own_group):
        what its handler started must not outlive it. Its number stays taken while the group
        has members, so no other process can hold it meanwhile."""
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass   # nothing left in it (or it never became a group)

    def alive(self, pid: int) -> bool:
        """False once it has exited (a zombie runs no code: it only awaits collection)."""
        return not pid_gone(pid)

    def rss(self, pid: int) -> int:
        try:
            return psutil.Process(pid).memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return 0


# Worker and zygote output comes to the daemon through a pipe and leaves through its logging, so
# it follows --log-config like every other line (the lines are already tagged "[worker ID]").
OUTPUT_LINE_LIMIT = 1 << 20
worker_output = logging.getLogger("torchd.worker")
_forwarders: set[asyncio.Task] = set()


def dispatch_fork_reply(message: dict, pending: dict[str, asyncio.Future],
                        on_exit: ExitCallback) -> None:
    """What a fork server (the zygote, a template) says: SPAWNED settles the pending fork of
    that child (its pid, or a RuntimeError), EXITED reports a child's exit."""
    kind = message.get("kind")
    if kind == messages.SPAWNED:
        child_id = str(message.get("worker_id"))
        future = pending.pop(child_id, None)
        if future is None or future.cancelled():
            _kill_abandoned(child_id, message.get("pid"))
            return
        if future.done():
            return
        if message.get("error") or not message.get("pid"):
            future.set_exception(RuntimeError(message.get("error") or "fork failed"))
        else:
            future.set_result(message["pid"])
    elif kind == messages.EXITED:
        on_exit(message["pid"], message["returncode"])


def _kill_abandoned(child_id: str, pid: object) -> None:
    """A child forked for a spawn nobody awaits any more (its worker was stopped while the
    fork was under way, or the wait ran out): no one would ever stop it, so it goes now. Its
    fork server reports the exit, which no worker claims."""
    if not isinstance(pid, int) or pid <= 0:
        return
    logger.info("killing pid %d, forked for %s after its start was abandoned", pid, child_id)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


async def exec_with_output_pipe(*argv: str) -> asyncio.subprocess.Process:
    """Start ``argv`` with its output (stdout and stderr) forwarded to ``worker_output``.

    In a session of its own: a terminal's Ctrl-C or hang-up signals the whole foreground process
    group, and a zygote or worker that took it would die mid-batch while the daemon drains (the
    daemon stops them itself; its death still ends them, through worker/watch.py)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, limit=OUTPUT_LINE_LIMIT, start_new_session=True)
    assert proc.stdout is not None   # stdout=PIPE
    task = asyncio.get_running_loop().create_task(_forward(proc.stdout))
    _forwarders.add(task)
    task.add_done_callback(_forwarders.discard)
    return proc


async def _forward(stream: asyncio.StreamReader) -> None:
    while True:
        try:
            line = await stream.readline()
        except (ValueError, asyncio.LimitOverrunError):   # a line longer than the limit
            line = await stream.read(OUTPUT_LINE_LIMIT)
        if not line:
            return
        text = line.decode(errors="replace").rstrip()
        if not DIRECT_LINES.write(worker_output, text):   # as the access log's lines
            worker_output.info("%s", text)


class ExecLauncher:
    """Starts each worker as `python -m worker ...` (its own interpreter, its own imports)."""

    forks_templates = False   # no process to fork a template from (daemon/workers/templates.py)

    def __init__(self, on_exit: ExitCallback, daemon_pid: int | None = None) -> None:
        self.on_exit = on_exit
        self.daemon_pid = daemon_pid or os.getpid()
        self._waiters: set[asyncio.Task] = set()
        self._pids: set[int] = set()

    async def start(self) -> None:
        return None

    async def spawn(self, worker_id: str, socket_path: str, title: str,
                    python_path: str | None = None, threads: int = 0,
                    compiler: bool = False) -> int:
        """``compiler`` is the zygote's business: an exec-spawned worker imports on its own."""
        extra = ["--python-path", python_path] if python_path else []
        if threads > 0:
            extra += ["--threads", str(threads)]
        proc = await exec_with_output_pipe(
            sys.executable, "-m", "worker", "--socket", socket_path, "--worker-id", worker_id,
            "--daemon-pid", str(self.daemon_pid), "--title", title, *extra)
        self._pids.add(proc.pid)
        task = asyncio.get_running_loop().create_task(self._wait(proc))
        self._waiters.add(task)
        task.add_done_callback(self._waiters.discard)
        return proc.pid

    async def _wait(self, proc: asyncio.subprocess.Process) -> None:
        returncode = await proc.wait()
        self._pids.discard(proc.pid)
        self.on_exit(proc.pid, returncode)

    def reap(self, pid: int) -> bool:
        """Nothing to do: asyncio's child watcher reaps the processes it started."""
        return True

    def reap_orphans(self) -> None:
        """Exec-spawned workers are the asyncio watchers' to collect."""

    def spawn_overdue(self) -> None:
        """Nothing stands between a spawn and its process here."""

    def owns(self, pid: int) -> bool:
        return pid in self._pids

    async def close(self) -> None:
        for task in list(self._waiters):
            task.cancel()


class ZygoteLauncher:
    """Asks a long-lived zygote process to fork workers; restarts the zygote if it dies.

    Falls back to exec-spawning while no zygote is available, so a broken zygote costs speed,
    never availability.
    """

    forks_templates = True    # spawn_template: a model version's template, for preloadModel

    def __init__(self, on_exit: ExitCallback, runtime_dir: Path,
                 daemon_pid: int | None = None, import_compiler: bool = True) -> None:
        self.on_exit = on_exit
        self.runtime_dir = runtime_dir
        # Whether the zygote may import torch's compiler for the workers of models that compile
        # (messages.spawn): only where there is no GPU, until it is checked on one that the
        # import leaves CUDA untouched in the zygote (a CUDA context cannot cross a fork)
        self.import_compiler = import_compiler
        self.daemon_pid = daemon_pid or os.getpid()
        self.fallback = ExecLauncher(on_exit, self.daemon_pid)
        self.pid: int | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[str, asyncio.Future] = {}
        # child id -> (when its SPAWN was written, whether it asked for the compiler import),
        # until the zygote answers it (even if nobody waits any more); and when the zygote
        # last answered one (spawn_overdue)
        self._asked: dict[str, tuple[float, bool]] = {}
        self._last_answer = 0.0
        self._reader_task: asyncio.Task | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._closing = False
        self._starting: asyncio.Task | None = None

    async def start(self) -> None:
        """Start the zygote in the background: it takes seconds to import torch, and the
        supervisor must run meanwhile. Spawns wait for it (see ``spawn``)."""
        self._begin_start()

    def _begin_start(self) -> None:
        self._starting = asyncio.get_running_loop().create_task(self._start_or_fall_back())

    async def _start_or_fall_back(self) -> None:
        try:
            await self._start_zygote()
        except (OSError, RuntimeError, TimeoutError, ProtocolError) as exc:
            logger.error("zygote failed to start (%s); workers will be exec-spawned", exc)

    async def _start_zygote(self) -> None:
        path = self.runtime_dir / "zygote.sock"
        path.unlink(missing_ok=True)
        connected: asyncio.Future = asyncio.get_running_loop().create_future()

        def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if not connected.done():
                connected.set_result((reader, writer))
            else:
                writer.close()

        server = await asyncio.start_unix_server(accept, str(path))
        try:
            # forked workers inherit the zygote's output pipe
            self._proc = await exec_with_output_pipe(
                sys.executable, "-m", "worker.zygote", "--socket", str(path),
                "--daemon-pid", str(self.daemon_pid))
            reader, writer = await asyncio.wait_for(connected, ZYGOTE_START_TIMEOUT)
            hello = await asyncio.wait_for(read_frame(reader), ZYGOTE_START_TIMEOUT)
        finally:
            server.close()
            path.unlink(missing_ok=True)
        if not hello or hello.get("kind") != messages.HELLO:
            raise RuntimeError(f"zygote said {hello!r} instead of hello")
        self.pid, self._writer = self._proc.pid, writer
        self._reader_task = asyncio.get_running_loop().create_task(self._read(reader, self._proc))
        logger.info("zygote ready, pid %d", self.pid)

    async def _read(self, reader: asyncio.StreamReader,
                    proc: asyncio.subprocess.Process) -> None:
        try:
            while (message := await read_frame(reader)) is not None:
                self._dispatch(message)
        except (OSError, ProtocolError) as exc:
            logger.error("zygote connection broken: %s", exc)
        self._writer = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RuntimeError("zygote went away"))
        self._pending.clear()
        self._asked.clear()
        await proc.wait()
        if not self._closing:
            logger.error("zygote (pid %s) exited with %s; restarting it", proc.pid, proc.returncode)
            self._begin_start()

    def _dispatch(self, message: dict) -> None:
        if message.get("kind") == messages.SPAWNED:
            self._asked.pop(str(message.get("worker_id")), None)
            self._last_answer = asyncio.get_running_loop().time()
        dispatch_fork_reply(message, self._pending, self.on_exit)

    def spawn_overdue(self) -> None:
        """A worker's spawn ran out of startup_timeout. A zygote that has answered no SPAWN
        since the oldest one still unanswered was written is stuck (stopped, deadlocked): kill
        it, and the restart that follows its exit brings a fresh one. (A dead zygote is seen
        at once; a stuck one would fail every spawn until the version ends FAILED.)"""
        if not self._asked or self._proc is None or self._proc.returncode is not None:
            return
        oldest = min(asked for asked, _ in self._asked.values())
        waited = asyncio.get_running_loop().time() - oldest
        if self._last_answer >= oldest:
            return
        if any(compiler for _, compiler in self._asked.values()) and \
                waited < ZYGOTE_START_TIMEOUT:
            return   # importing torch's compiler (5-30 s) holds up the SPAWNs behind it
        logger.error("zygote (pid %s) has answered no spawn for %.0f s; restarting it",
                     self._proc.pid, waited)
        self._asked.clear()   # asked of this zygote: once is enough
        self._proc.kill()

    async def spawn(self, worker_id: str, socket_path: str, title: str,
                    python_path: str | None = None, threads: int = 0,
                    compiler: bool = False) -> int:
        """``threads`` matters to an exec-spawned worker only: a forked one sets torch's
        threads itself from its LOAD frame (its OpenMP runtime was loaded by the zygote).
        ``compiler``: the worker's model compiles, so the zygote imports torch's compiler
        first (messages.spawn)."""
        if python_path:
            # its own packages must be imported before anything the zygote already holds
            return await self.fallback.spawn(worker_id, socket_path, title, python_path,
                                             threads)
        if self._starting is not None and not self._starting.done():
            # Waiting for a warming zygote beats exec: an exec-spawned worker imports torch
            # on its own (slower on a busy machine, and none of the memory is shared).
            await asyncio.wait({self._starting})
        if self._writer is None:
            return await self.fallback.spawn(worker_id, socket_path, title, None, threads)
        return await self._fork(worker_id, messages.spawn(
            worker_id, socket_path, title, self.daemon_pid, compiler and self.import_compiler))

    async def spawn_template(self, template_id: str, socket_path: str, title: str,
                             load: dict) -> int | None:
        """A model version's template (worker/template.py), forked by the zygote, which
        reports its exit like a worker's; None while there is no zygote to fork it."""
        if self._starting is not None and not self._starting.done():
            await asyncio.wait({self._starting})
        if self._writer is None:
            return None
        return await self._fork(template_id, messages.spawn_template(
            template_id, socket_path, title, self.daemon_pid, load,
            self.import_compiler and compiles(load.get("model_yaml_config") or {})))

    async def _fork(self, child_id: str, spawn: dict) -> int:
        assert self._writer is not None
        future = asyncio.get_running_loop().create_future()
        self._pending[child_id] = future
        self._asked[child_id] = (asyncio.get_running_loop().time(), bool(spawn.get("compiler")))
        write_frame(self._writer, spawn)
        await self._writer.drain()
        return await asyncio.wait_for(future, ZYGOTE_START_TIMEOUT)

    def reap_orphans(self) -> None:
        """Collect exited processes re-parented to the daemon (their subreaper) that nobody
        waits for: a template's workers that exited after it, a dead zygote's. The zygote and
        exec-spawned workers are left to the asyncio watchers that wait for them."""
        try:
            children = psutil.Process().children()
        except psutil.Error:
            return
        for child in children:
            if child.pid == self.pid or self.fallback.owns(child.pid):
                continue
            with contextlib.suppress(psutil.Error, ChildProcessError):
                if child.status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(child.pid, os.WNOHANG)

    def reap(self, pid: int) -> bool:
        """Collect a worker orphaned by a dead zygote (the daemon is their subreaper).

        False while the process is not yet collectable: its main thread shows as a zombie
        before its other threads are gone, and waitpid has nothing to return until then.
        """
        if self.fallback.owns(pid):
            return True
        try:
            reaped, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return True       # not our child: the zygote that forked it collects it
        if reaped != pid:
            return False
        self.on_exit(pid, os.waitstatus_to_exitcode(status))   # nobody else can report it now
        return True

    async def close(self) -> None:
        self._closing = True
        if self._starting:
            self._starting.cancel()
        if self._writer is not None:
            self._writer.close()          # EOF: the zygote exits by itself
        elif self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()         # still warming up: nobody is waiting for it
        if self._proc is not None and self._proc.returncode is None:
            try:
                await asyncio.wait_for(self._proc.wait(), 5)
            except asyncio.TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        await self.fallback.close()
