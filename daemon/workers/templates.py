"""Templates: per model version, a process that ran the handler's ``initialize`` once and forks
the version's workers, which share its loaded weights copy-on-write (``preloadModel``).

The Supervisor alone starts, stops and forgets templates, as it does workers; a TemplateRunner
(daemon/workers/template_runner.py) runs each one's life and reports it. Here: where preloading
applies (:func:`preload_refusal`), a template's states, and the ``TemplateHandle`` that the
Supervisor, the template's runner and the workers forked from it share.

What a worker of a preloading version does when it starts (``TemplateHandle.fork``): it waits
for the version's template to settle, within its own startup_timeout; a READY template forks
it; a template that fell back (its load made forking unsafe, or it could not be forked itself)
lets it load the model itself; a template whose load failed fails the worker's start with the
same cause a worker's own load would give.
"""
from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from daemon.models.registry import ModelVersion

logger = logging.getLogger(__name__)


class Forker(Protocol):
    """A READY template's socket (daemon/workers/template_runner.py's TemplateLink)."""

    async def spawn(self, worker_id: str, socket_path: str, title: str) -> int: ...


def preload_refusal(wanted: bool, on_gpu: bool, forks: bool, own_python: bool) -> str | None:
    """Why a version's ``preloadModel`` is not applied (None: it is, or it is not asked for).
    ``on_gpu``: its workers are placed on GPUs; ``forks``: the launcher can fork a template
    (the zygote); ``own_python``: its workers are exec-spawned with packages of their own."""
    if not wanted:
        return None
    if on_gpu:
        return "its workers run on GPUs, and a CUDA context cannot cross a fork"
    if own_python:
        return ("its workers are started with packages of their own (install_py_dep_per_model),"
                " not forked")
    if not forks:
        return "workers are not forked (worker_spawn=exec)"
    return None


class TemplateState(str, enum.Enum):
    STARTING = "STARTING"   # forked, running the handler's initialize
    READY = "READY"         # loaded; forks the version's workers
    FALLBACK = "FALLBACK"   # unsafe to fork from, or not forked at all: workers load themselves
    FAILED = "FAILED"       # the handler failed to load: so do the workers waiting for it
    STOPPING = "STOPPING"   # asked to exit
    STOPPED = "STOPPED"     # gone; forgotten by the Supervisor right after


T = TemplateState
TRANSITIONS: dict[TemplateState, frozenset[TemplateState]] = {
    T.STARTING: frozenset({T.READY, T.FALLBACK, T.FAILED, T.STOPPING, T.STOPPED}),
    T.READY: frozenset({T.STOPPING, T.STOPPED}),
    T.FALLBACK: frozenset({T.STOPPING, T.STOPPED}),
    T.FAILED: frozenset({T.STOPPING, T.STOPPED}),
    T.STOPPING: frozenset({T.STOPPED}),
    T.STOPPED: frozenset(),
}
SETTLED = frozenset({T.READY, T.FALLBACK, T.FAILED, T.STOPPING, T.STOPPED})


class TemplateFailed(Exception):
    """The template's load failed: the cause, as a worker's own failed load would give it."""


@dataclass(eq=False)
class TemplateHandle:
    id: str
    mv: ModelVersion
    # -- written by the Supervisor only --
    state: TemplateState = TemplateState.STARTING
    pid: int | None = None
    started_at: float = 0.0             # monotonic
    ready_since: float | None = None
    error: str | None = None            # why it failed or fell back
    returncode: int | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)
    settled: asyncio.Event = field(default_factory=asyncio.Event)   # out of STARTING
    outcome: TemplateState | None = None   # the state it settled in (it moves on from there)
    task: asyncio.Task | None = None    # its runner's task
    # -- written by its runner only --
    link: Forker | None = None          # its socket, once READY
    load_seconds: float = 0.0           # its initialize's, as it reported

    def move(self, new: TemplateState) -> None:
        if new not in TRANSITIONS[self.state]:
            raise RuntimeError(f"template cannot go from {self.state.value} to {new.value}")
        self.state = new
        if new in SETTLED and self.outcome is None:
            self.outcome = new
            self.settled.set()

    @property
    def live(self) -> bool:
        """Starting or forking: a new worker of its version waits for it."""
        return self.state in (T.STARTING, T.READY)

    @property
    def title(self) -> str:
        return f"torchd template {self.mv.name} {self.mv.version}"

    def ready_for(self, now: float) -> float | None:
        return None if self.ready_since is None else now - self.ready_since

    async def fork(self, worker_id: str, socket_path: str, title: str) -> int | None:
        """A worker forked from this template: its pid; None when the worker must load the
        model itself. Raises TemplateFailed when the template's load failed."""
        await self.settled.wait()
        if self.outcome is T.FAILED:
            raise TemplateFailed(self.error or "the handler failed to load in its template")
        link = self.link
        if self.state is not T.READY or link is None:   # fell back, stopped, or gone since
            return None
        try:
            return await link.spawn(worker_id, socket_path, title)
        except (OSError, RuntimeError) as exc:
            logger.warning("the template of %s %s could not fork worker %s (%s); it loads the "
                           "model itself", self.mv.name, self.mv.version, worker_id, exc)
            return None

    def describe(self, rss: int) -> dict[str, Any]:
        """describe's version-level ``template`` entry."""
        return {"pid": self.pid or -1, "status": self.state.value, "memoryUsage": rss}
