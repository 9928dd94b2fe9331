"""The daemon: one event loop (uvloop) serving three listeners around one core (DaemonCore, the
daemon/core.py ``Core`` that the front ends take).

Start: bind the listeners (a busy port fails the start at once), start the workers' launcher,
restore the newest snapshot, load the startup models, then listen and tell systemd READY=1.
Clients are refused until then, as TorchServe does, so no management call can race the restore.

Shutdown (SIGTERM, SIGINT or SIGHUP): readiness goes false, requests are still served for
``shutdown_delay`` seconds, then listeners stop accepting, in-flight requests finish (bounded),
workers stop, a final snapshot is written, exit 0.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

import uvloop

from daemon.http import openapi
from daemon.http.apps import build_inference_app, build_management_app, build_metrics_app
from daemon.models.archives import PreparedArchive, remove_prepared
from daemon.models.call import Predictions
from daemon.models.job import StreamLimits
from daemon.config.settings import Config
from daemon.workers.launcher import ExecLauncher, ExitCallback, ZygoteLauncher
from daemon.gpus.inventory import discover_gpus
from daemon.metrics import Metrics
from daemon.metrics.configured import metrics_options
from daemon.metrics.spec import MetricsConfigError, worker_declarations
from daemon.metrics.system import SystemMetrics
from daemon.config.files import SNAPSHOT_CONFIG_KEY
from daemon.control.manager import ModelManager
from daemon.models.registry import Registry
from daemon.models.snapshots import SnapshotStore
from daemon.ops.startup import load_model_snapshot
from daemon.osutil import keep_from_cleaners, usable_cpus
from daemon.ops.listeners import GRACEFUL_HTTP, ListenerError, Listeners, bind_listeners
from daemon.logfiles import CHECK_SECONDS, START_LOG, StderrLog
from daemon.ops.preflight import start_problem
from daemon.ops.process import (STOP_SIGNALS, become_subreaper, make_runtime_dir,
                                settle_garbage_collector, stop_on)
from daemon.version import VERSION
from daemon.ops.startup import (StartupError, load_startup_models, restore_snapshot,
                                restore_torchserve_snapshot, restore_workflows)
from daemon.workers.readiness import Health
from daemon.workers.runner import RunnerSettings
from daemon.workers.supervisor import Supervisor, SupervisorSettings
from daemon.ops.systemd import Notifier
from daemon.control.tokens import TokenStore
from daemon.workflows.manager import WorkflowManager

if TYPE_CHECKING:
    from daemon.rpc.server import RpcListeners

logger = logging.getLogger(__name__)
START_STEP_SLACK = 30.0   # seconds beyond a start step's startup_timeout (EXTEND_TIMEOUT_USEC)


class DaemonCore:
    """Everything the daemon owns, built once from the Config: the ``Core`` (daemon/core.py)
    that the HTTP apps and the gRPC services are built around."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.version = VERSION
        self.runtime_dir = make_runtime_dir()
        self._runtime_lock: int | None = keep_from_cleaners(self.runtime_dir)   # till stop()
        self.registry = Registry()
        # Once, through NVML (never CUDA: the zygote forks workers from this process's child).
        self.gpus = discover_gpus(config.cuda_visible_devices, config.number_of_gpu)
        self.metrics = Metrics(collect_hook=self._refresh_gauges,
                               options=metrics_options(config))
        runner = RunnerSettings(runtime_dir=self.runtime_dir / "sockets",
                                max_frame=config.max_response_size, server_version=VERSION,
                                service_envelope=config.service_envelope,
                                max_request=config.max_request_size,
                                sequence_headers=config.sequence_headers,
                                ipex_enable=config.ipex_enable,
                                model_metrics=worker_declarations(self.metrics.options.spec))
        settings = SupervisorSettings(
            runner, heartbeat_interval=config.heartbeat_interval,
            autoscale_up_delay=config.autoscale_up_delay,
            autoscale_down_delay=config.autoscale_down_delay, cpus=usable_cpus())
        self.supervisor = Supervisor(self.registry, settings, self._launcher_factory(),
                                     metrics=self.metrics, gpus=self.gpus)
        self.snapshots = SnapshotStore(config.snapshot_dir, enabled=config.snapshots_written)
        # What a start from this snapshot as --ts-config reads for its settings (config/files.py)
        self.snapshots.sections[SNAPSHOT_CONFIG_KEY] = lambda: (
            str(config.config_file) if config.config_file is not None else None)
        self.system_metrics = SystemMetrics(self.metrics, self.supervisor.placement,
                                            config.metric_time_interval)
        self.manager = ModelManager(config, self.registry, self.supervisor,
                                    self.runtime_dir / "models", snapshots=self.snapshots,
                                    metrics=self.metrics, gpus=self.gpus)
        self.health = Health(self.registry, self.supervisor)
        self.predictions = Predictions(self.registry, self.supervisor, self.metrics,
                                       config.sequence_headers,
                                       StreamLimits(config.max_stream_buffer_size,
                                                    config.response_send_timeout))
        self.workflows = WorkflowManager(config, self.registry, self.manager, self.predictions,
                                         self.snapshots, self.runtime_dir / "workflows")
        self.tokens = TokenStore(config.key_file, config.token_auth_enabled,
                                 config.token_expiration_min)
        self.documents = {"management": openapi.management_document(VERSION),
                          "inference": openapi.inference_document(VERSION)}
        self.notifier = Notifier(config.notify_socket)

    def _launcher_factory(self) -> Callable[[ExitCallback], ExecLauncher | ZygoteLauncher]:
        if self.config.worker_spawn == "exec":
            return lambda on_exit: ExecLauncher(on_exit)
        return lambda on_exit: ZygoteLauncher(on_exit, self.runtime_dir,
                                              import_compiler=not self.gpus.ids)

    def _refresh_gauges(self) -> None:
        for mv in self.registry.all_versions():
            self.metrics.set_queue_depth(mv.name, mv.version, mv.queue.depth)
            handles = self.supervisor.handles(mv)
            held = sum(handle.jobs_held for handle in handles)
            waiting = mv.queue.depth + mv.queue.gathering
            self.metrics.set_inflight(mv.name, mv.version, waiting + held)
            if mv.settings.continuous_batching:   # held: the workers' running batches
                self.metrics.set_llm_requests(mv.name, mv.version, held, waiting)
            self.metrics.set_streams_paused(
                mv.name, mv.version,
                sum(1 for handle in handles if handle.conn is not None and handle.conn.held))
            self.metrics.set_worker_states(mv.name, mv.version, self.supervisor.counts(mv))
        self.system_metrics.publish()   # the host's, the GPUs' and the GPU workers' memory

    async def start(self) -> None:
        """Raises StartupError (a message naming what is wrong) when the start must fail."""
        (self.runtime_dir / "models").mkdir(parents=True, exist_ok=True)
        self.notifier.status("starting the worker launcher")
        await self.supervisor.start()
        if self.config.model_snapshot is not None:
            await self._load_model_snapshot()
        else:
            await self._load_saved_and_startup_models()
        await self._save_snapshot("startup")

    async def _load_saved_and_startup_models(self) -> None:
        named = self.config.restore_snapshot
        refused: list[str]
        if named is not None or not self.config.ncs:
            self.notifier.status(f"restoring the snapshot {named}" if named else
                                 f"restoring the newest snapshot in {self.config.snapshot_dir}")
            restored, refused = 0, []
            if named is None:   # where TorchServe ran before torchd wrote a snapshot
                restored, refused = await restore_torchserve_snapshot(
                    self.snapshots, self.config, self.manager)
            restored += await restore_snapshot(self.snapshots, self.manager, named)
            restored += await restore_workflows(self.snapshots, self.workflows, named)
            self.health.expect(refused)
            await self._start_restored(restored)
        failed = await load_startup_models(self.config, self.manager, self._loading)
        if failed:
            logger.error("%d startup model(s) failed to load; serving the others, not ready "
                         "until %s registered", len(failed), ", ".join(failed))
            self.health.expect(failed)

    async def _save_snapshot(self, kind: str) -> None:
        try:
            await self.snapshots.save(self.registry, kind)
        except Exception:
            logger.exception("%s snapshot failed", kind)

    async def _load_model_snapshot(self) -> None:
        """TorchServe's rule: a model_snapshot in the config takes the place of the newest
        snapshot, and load_models is not read."""
        logger.info("model_snapshot is set: the newest snapshot in %s is not restored",
                    self.config.snapshot_dir)
        if self.config.load_models:
            logger.warning("model_snapshot is set: load_models (%s) is ignored",
                           ",".join(self.config.load_models))
        self.notifier.status("loading the models of model_snapshot")
        count, refused = await load_model_snapshot(self.config, self.manager)
        if refused:   # as for --models: not ready until registered (by hand, fixed)
            self.health.expect(refused)
        await self._start_restored(count)

    async def _start_restored(self, count: int) -> None:
        if not count:
            return
        self.notifier.status(f"starting the workers of {count} restored version(s)")
        longest = max(mv.settings.startup_timeout for mv in self.registry.all_versions())
        self.notifier.extend_timeout(longest + START_STEP_SLACK)
        await self._wait_startup_workers()

    def _loading(self, text: str) -> None:
        """Each startup model may take its startup_timeout: TimeoutStartSec= need not add
        them all up."""
        self.notifier.status(text)
        self.notifier.extend_timeout(self.config.default_startup_timeout + START_STEP_SLACK)

    async def _wait_startup_workers(self) -> None:
        for mv in self.registry.all_versions():
            await self.supervisor.wait_for_workers(mv, mv.settings.startup_timeout)

    def summary(self) -> str:
        versions = self.registry.all_versions()
        ready = sum(self.supervisor.ready_count(mv) for mv in versions)
        return f"serving {len(versions)} model version(s) with {ready} READY worker(s)"

    async def stop(self, final_snapshot: bool = True) -> None:
        """Stop every worker and clean up. ``final_snapshot=False`` after a failed or abandoned
        start: a partial restore written over the newest snapshot would forget models."""
        self.health.draining = True
        self.notifier.status("stopping workers")
        await self.supervisor.close(self.config.unregister_model_timeout)
        if final_snapshot:
            self.notifier.status("writing the final snapshot")
            await self._save_snapshot("shutdown")
        for mv in self.registry.all_versions():
            await asyncio.to_thread(_remove_extracted, mv.archive)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        if self._runtime_lock is not None:
            os.close(self._runtime_lock)
            self._runtime_lock = None
        if self.metrics.options.log is not None:
            self.metrics.options.log.close()


def _remove_extracted(archive: PreparedArchive) -> None:
    """At shutdown: our extracted copy goes, a download stays for the snapshot's restore."""
    remove_prepared(dataclasses.replace(archive, downloaded=False))


# ---- the daemon's life ------------------------------------------------------------------------


async def serve_forever(config: Config) -> int:
    # Imported here, not at the top: the OIP messages (package ``inference``) enter protobuf's
    # process-wide descriptor pool on import, where Triton's client defines the same names; a
    # process that imports this module without serving (a test, a tool) must not hold them.
    from daemon.rpc.server import BindError, RpcListeners

    loop = asyncio.get_running_loop()
    shutdown = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop_on, sig, shutdown)
    problem = start_problem(config)
    if problem:
        logger.error("cannot start: %s", problem)
        return 1
    try:
        sockets = bind_listeners(config)
    except ListenerError as exc:
        logger.error("cannot start: %s", exc)
        return 1
    rpc = RpcListeners(config)
    watchdog = log_guard = None
    try:
        try:
            rpc.bind()
        except BindError as exc:
            logger.error("cannot start: %s", exc)
            return 1
        try:
            core = DaemonCore(config)
        except (OSError, MetricsConfigError) as exc:   # runtime dir, key file, metrics_config
            logger.error("cannot start: %s", exc)
            return 1
        # Pings from the first moment: a start that loads big models must not look hung.
        interval = config.watchdog_interval
        watchdog = asyncio.ensure_future(_watchdog(core, interval)) if interval else None
        log = StderrLog.of_this_process(config.log_location / START_LOG,
                                        config.log_file_max_size)
        log_guard = asyncio.ensure_future(_keep_bounded(log)) if log else None
        if not await _start_core(core, shutdown):
            return 0 if shutdown.is_set() else 1
        return await _serve_until_shutdown(core, sockets, rpc, shutdown)
    finally:
        for sock in sockets.values():
            sock.close()   # a no-op for those handed to a server
        await rpc.stop(0)   # a no-op once stopped
        for task in (watchdog, log_guard):
            if task:
                task.cancel()


async def _start_core(core: DaemonCore, shutdown: asyncio.Event) -> bool:
    """True once started; False after a failed start or a signal during it (cleaned up)."""
    starting = asyncio.ensure_future(core.start())
    signalled = asyncio.ensure_future(shutdown.wait())
    await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
    signalled.cancel()
    if not starting.done():
        logger.warning("signalled while starting: abandoning the start")
        core.notifier.stopping()
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await core.stop(final_snapshot=False)
        return False
    error = starting.exception()
    if error is None:
        return True
    if isinstance(error, StartupError):
        logger.error("cannot start: %s", error)
    else:
        logger.error("cannot start: %s: %s", type(error).__name__, error, exc_info=error)
    core.notifier.status(f"failed to start: {error}")
    await core.stop(final_snapshot=False)
    return False


async def _serve_until_shutdown(core: DaemonCore, sockets: dict[str, socket.socket],
                                rpc: RpcListeners, shutdown: asyncio.Event) -> int:
    config = core.config
    apps = {"inference": build_inference_app(core), "management": build_management_app(core),
            "metrics": build_metrics_app(core)}
    listeners = Listeners(config, sockets, apps)
    servers = listeners.serve()
    for name, address in config.listeners.items():
        logger.info("%s API listening on %s", name, address.url)
    await rpc.serve(core)
    system_log = (asyncio.ensure_future(core.system_metrics.log_every_interval())
                  if core.system_metrics.logged else None)
    settle_garbage_collector()
    core.notifier.ready(core.summary())
    logger.info("torchd ready: %s", core.summary())
    # TorchServe's line once it serves, which scripts wait for in its log (benchmark-ab.py)
    logger.info("Model server started.")
    done = asyncio.ensure_future(shutdown.wait())
    await asyncio.wait([done, *servers], return_when=asyncio.FIRST_COMPLETED)
    done.cancel()
    if system_log is not None:
        system_log.cancel()
    core.notifier.stopping()
    core.health.draining = True
    await _announce_shutdown(config.shutdown_delay)
    logger.info("shutting down: draining requests and workers")
    listeners.close()
    results = await asyncio.gather(*servers, rpc.stop(GRACEFUL_HTTP), return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            logger.error("listener failed: %s", result)
    await core.stop()
    logger.info("torchd stopped")
    return 0 if shutdown.is_set() else 1


async def _announce_shutdown(delay: float) -> None:
    """Readiness is false already; keep serving ``delay`` seconds more. A Service or load
    balancer notices the 503 (or the pod's removal) a little later than the signal: requests
    still routed here meanwhile are answered rather than refused."""
    if delay > 0:
        logger.info("shutting down: readiness is false; serving %g s more (shutdown_delay)",
                    delay)
        await asyncio.sleep(delay)


async def _watchdog(core: DaemonCore, interval: float) -> None:
    while True:
        core.notifier.watchdog()
        await asyncio.sleep(interval)


async def _keep_bounded(log: StderrLog) -> None:
    """torchd start's log, set aside past log_file_max_size (daemon/logfiles.py)."""
    while True:
        await asyncio.sleep(CHECK_SECONDS)
        try:
            began = log.check()
        except OSError as exc:   # a full disk: the old file goes on taking what it can
            logger.warning("cannot set %s aside: %s", log.path, exc)
            continue
        if began:
            logger.info("%s began: the last one is %s.1 (log_file_max_size %d)", log.path,
                        log.path.name, log.max_bytes)


def run(config: Config) -> int:
    become_subreaper()
    logger.info("torchd %s starting (pid %d)", VERSION, os.getpid())
    return uvloop.run(serve_forever(config))
