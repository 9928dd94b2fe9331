"""The Supervisor's templates (``preloadModel``): when a version has one, the events its runner
reports, describe's view of it. A base of the Supervisor, which alone calls these: templates
are started, stopped and forgotten here and nowhere else, as workers are in supervisor.py.

The rules (see daemon/workers/templates.py for what a worker does with its template):

- A version that preloads (``preloadModel``, CPU workers forked by the zygote) has a template
  while it wants workers (target > 0); at target 0, and when it is unregistered, the template is
  stopped (the daemon's shutdown stops every one).
- A template that dies unasked is replaced at the next reconcile, its workers serving on
  meanwhile (they are the daemon's children now); repeated early ends back off as worker
  restarts do (``VersionRecord.template_ended``), and while one backs off, new workers load the
  model themselves.
- A template whose load leaves it unsafe to fork from ends preloading for that version (logged
  once, as a warning, with the reason); its workers load the model themselves from then on.
"""
from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from daemon.models.registry import ModelVersion
from daemon.osutil import exit_description
from daemon.workers.records import VersionRecord
from daemon.workers.template_runner import TemplateRunner
from daemon.workers.templates import TemplateHandle, TemplateState, preload_refusal

logger = logging.getLogger(__name__)
T = TemplateState


class TemplateSupervision(abc.ABC):
    """The Supervisor's templates: ``templates`` (one per version at most) is its table."""

    templates: dict[ModelVersion, TemplateHandle]
    template_runner: TemplateRunner
    clock: Callable[[], float]
    launcher: Any
    placement: Any
    pids: Any
    ops: Any
    settings: Any

    @abc.abstractmethod
    def record(self, mv: ModelVersion) -> VersionRecord: ...

    @abc.abstractmethod
    def notify_changed(self) -> None: ...

    @abc.abstractmethod
    def next_template_id(self) -> str: ...

    @abc.abstractmethod
    def handles(self, mv: ModelVersion) -> list[Any]: ...

    # ---- decisions -----------------------------------------------------------------------

    def preloads(self, mv: ModelVersion) -> bool:
        """Whether ``mv``'s workers come from a template; where ``preloadModel`` cannot apply
        it says so once."""
        if not mv.settings.preload_model:
            return False
        record = self.record(mv)
        if record.preload_off is None:
            reason = preload_refusal(True, self.placement.on_gpu(mv),
                                     bool(getattr(self.launcher, "forks_templates", False)),
                                     mv.deps_dir is not None)
            if reason is not None:
                record.preload_off = reason
                logger.info("%s %s: preloadModel does not apply, each worker loads the model "
                            "itself: %s", mv.name, mv.version, reason)
        return record.preload_off is None

    def reconcile_template(self, mv: ModelVersion, record: VersionRecord) -> None:
        template = self.templates.get(mv)
        wanted = record.target > 0 and mv.settings.startup_timeout > 0 and self.preloads(mv)
        if template is None:
            if wanted and self.clock() >= record.template_retry_at:
                self.start_template(mv)
        elif not wanted and not self.handles(mv):
            # after the version's last worker is gone: the template collects its workers
            self.stop_template(template)

    def template_for_worker(self, mv: ModelVersion) -> TemplateHandle | None:
        """The template a new worker of ``mv`` is to be forked from (it may still load)."""
        template = self.templates.get(mv)
        return template if template is not None and template.live else None

    def start_template(self, mv: ModelVersion) -> TemplateHandle:
        template = TemplateHandle(id=self.next_template_id(), mv=mv, started_at=self.clock())
        self.templates[mv] = template
        template.task = asyncio.get_running_loop().create_task(self.template_runner.run(template))
        logger.info("starting template %s for %s %s (preloadModel)", template.id, mv.name,
                    mv.version)
        return template

    def stop_template(self, template: TemplateHandle) -> None:
        if template.state in (T.STOPPING, T.STOPPED):
            return
        template.move(T.STOPPING)
        template.stop_requested.set()
        logger.info("stopping the template of %s %s (pid %s)", template.mv.name,
                    template.mv.version, template.pid)

    def stop_templates_of_gone(self, live: Iterable[ModelVersion]) -> None:
        for mv in set(self.templates) - set(live):
            self.stop_template(self.templates[mv])

    async def stop_templates(self, versions: Iterable[ModelVersion]) -> None:
        """Stop the templates of ``versions`` and wait until their processes are gone."""
        stopping = [self.templates[mv] for mv in set(versions) if mv in self.templates]
        for template in stopping:
            self.stop_template(template)
        tasks = [t.task for t in stopping if t.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # ---- events from the template runners (TemplateEvents) --------------------------------

    def template_process_started(self, template: TemplateHandle, pid: int) -> None:
        template.pid = pid
        self.pids.track(pid, template)

    def template_settled(self, template: TemplateHandle, state: TemplateState,
                         detail: str | None) -> None:
        if template.state is not T.STARTING:   # stopped meanwhile: nobody waits for it
            return
        mv, now = template.mv, self.clock()
        template.move(state)
        template.error = detail
        if state is T.READY:
            template.ready_since = now
            logger.info("template %s for %s %s READY (pid %s; loaded in %.2f s, %.2f s after "
                        "its start)", template.id, mv.name, mv.version, template.pid,
                        template.load_seconds, now - template.started_at)
        elif state is T.FALLBACK and template.pid is not None:   # loaded, but unsafe
            self.record(mv).preload_off = detail
            logger.warning("%s %s: preloadModel falls back to loading the model in each "
                           "worker: %s", mv.name, mv.version, detail)
        elif state is T.FALLBACK:
            logger.warning("%s %s: no template this time (%s); new workers load the model "
                           "themselves", mv.name, mv.version, detail)
        else:
            logger.error("template %s for %s %s failed to load: %s", template.id, mv.name,
                         mv.version, detail)
        self.notify_changed()

    def template_exited(self, template: TemplateHandle) -> None:
        mv, now = template.mv, self.clock()
        if template.state is not T.STOPPING and template.state is not T.STOPPED:
            delay = self.record(mv).template_ended(template.ready_for(now),
                                                   self.settings.policy, now)
            if template.state is T.READY:
                logger.error("template %s for %s %s (pid %s) died (%s); its workers keep "
                             "serving; a new one starts in %g s", template.id, mv.name,
                             mv.version, template.pid, exit_description(template.returncode),
                             delay)
        else:
            logger.info("template %s for %s %s stopped", template.id, mv.name, mv.version)
        if template.state is not T.STOPPED:
            template.move(T.STOPPED)
        if template.pid is not None:
            self.pids.forget(template.pid)
        if self.templates.get(mv) is template:
            del self.templates[mv]
        self.notify_changed()

    # ---- queries -------------------------------------------------------------------------

    def describe_template(self, mv: ModelVersion) -> dict[str, Any]:
        """describe's version-level ``template`` entry, when the version has one."""
        template = self.templates.get(mv)
        if template is None or template.pid is None:
            return {}
        return {"template": template.describe(self.ops.rss(template.pid))}
