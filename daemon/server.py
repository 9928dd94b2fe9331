"""The daemon: one event loop (uvloop) serving three listeners around one Core.

Shutdown (SIGTERM/SIGINT): readiness goes false, listeners stop accepting, in-flight requests
finish (bounded), workers stop, a final snapshot is written, exit 0.
"""
from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

import uvloop
from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig

from daemon import openapi, snapshot
from daemon.archives import PreparedArchive, remove_prepared
from daemon.app import build_inference_app, build_management_app, build_metrics_app
from daemon.config import BindAddress, Config
from daemon.inference import Health
from daemon.launcher import ExecLauncher, ZygoteLauncher
from daemon.metrics import Metrics
from daemon.model_manager import ModelManager
from daemon.registry import Registry
from daemon.startup import load_startup_models, restore_snapshot, snapshot_state
from daemon.supervisor import Supervisor, SupervisorSettings
from daemon.systemd import Notifier
from daemon.tokens import TokenStore

logger = logging.getLogger(__name__)
VERSION = "0.1.0"
PR_SET_CHILD_SUBREAPER = 36
GRACEFUL_HTTP = 30.0      # seconds in-flight HTTP requests get at shutdown


class Core:
    """Everything the daemon owns, built once from the Config."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.version = VERSION
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="torchd-"))
        self.registry = Registry()
        self.metrics = Metrics(collect_hook=self._refresh_gauges)
        settings = SupervisorSettings(
            runtime_dir=self.runtime_dir / "sockets", max_frame=config.max_response_size,
            server_version=VERSION, heartbeat_interval=config.heartbeat_interval,
            autoscale_up_delay=config.autoscale_up_delay,
            autoscale_down_delay=config.autoscale_down_delay)
        self.supervisor = Supervisor(self.registry, settings, self._launcher_factory(),
                                     metrics=self.metrics)
        self.manager = ModelManager(config, self.registry, self.supervisor,
                                    self.runtime_dir / "models", self._save_snapshot)
        self.health = Health(self.registry, self.supervisor)
        self.tokens = TokenStore(config.key_file, config.token_auth_enabled)
        self.documents = {"management": openapi.management_document(VERSION),
                          "inference": openapi.inference_document(VERSION)}
        self.notifier = Notifier(config.notify_socket)

    def _launcher_factory(self) -> Any:
        if self.config.worker_spawn == "exec":
            return lambda on_exit: ExecLauncher(on_exit)
        return lambda on_exit: ZygoteLauncher(on_exit, self.runtime_dir)

    async def _save_snapshot(self) -> None:
        state = snapshot_state(self.registry)
        await asyncio.to_thread(snapshot.save_snapshot, self.config.snapshot_dir, state)

    def _refresh_gauges(self) -> None:
        for mv in self.registry.all_versions():
            self.metrics.set_queue_depth(mv.name, mv.version, mv.queue.depth)
            self.metrics.set_worker_states(mv.name, mv.version, self.supervisor.counts(mv))

    async def start(self) -> None:
        (self.runtime_dir / "models").mkdir(parents=True, exist_ok=True)
        await self.supervisor.start()
        if not self.config.ncs:
            restored = await restore_snapshot(self.config, self.manager)
            if restored:
                await self._wait_startup_workers()
        await load_startup_models(self.config, self.manager)

    async def _wait_startup_workers(self) -> None:
        for mv in self.registry.all_versions():
            await self.supervisor.wait_for_workers(mv, mv.settings.startup_timeout)

    async def stop(self) -> None:
        self.health.draining = True
        await self.supervisor.close(self.config.unregister_model_timeout)
        try:
            await self._save_snapshot()
        except Exception:
            logger.exception("final snapshot failed")
        for mv in self.registry.all_versions():
            await asyncio.to_thread(_remove_extracted, mv.archive)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)


def _remove_extracted(archive: PreparedArchive) -> None:
    """At shutdown: our extracted copy goes, a download stays for the snapshot's restore."""
    remove_prepared(dataclasses.replace(archive, downloaded=False))


def hypercorn_config(address: BindAddress, config: Config) -> HypercornConfig:
    hc = HypercornConfig()
    hc.bind = [address.bind]
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.graceful_timeout = GRACEFUL_HTTP
    hc.keep_alive_timeout = 75
    hc.h11_max_incomplete_size = 64 * 1024
    if address.is_tls:
        hc.certfile = str(config.certificate_file)
        hc.keyfile = str(config.private_key_file)
    return hc


def become_subreaper() -> None:
    """Workers orphaned by a dead zygote re-parent to the daemon, staying its descendants."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        logger.warning("cannot become a child subreaper; orphaned workers re-parent to init")


async def serve_forever(config: Config) -> int:
    loop = asyncio.get_running_loop()
    shutdown = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shutdown.set)
    core = Core(config)
    apps = {"inference": build_inference_app(core), "management": build_management_app(core),
            "metrics": build_metrics_app(core)}
    listeners_closed = asyncio.Event()
    servers = [asyncio.ensure_future(serve(apps[name], hypercorn_config(address, config),
                                           shutdown_trigger=listeners_closed.wait))
               for name, address in config.listeners.items()]
    await core.start()
    for name, address in config.listeners.items():
        logger.info("%s API listening on %s", name, address)
    core.notifier.ready(f"serving {len(core.registry.all_versions())} model version(s)")
    watchdog = asyncio.ensure_future(_watchdog(core)) if config.watchdog_interval else None
    done = asyncio.ensure_future(shutdown.wait())
    await asyncio.wait([done, *servers], return_when=asyncio.FIRST_COMPLETED)
    logger.info("shutting down: draining requests and workers")
    core.notifier.stopping()
    core.health.draining = True
    listeners_closed.set()
    results = await asyncio.gather(*servers, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            logger.error("listener failed: %s", result)
    await core.stop()
    if watchdog:
        watchdog.cancel()
    logger.info("torchd stopped")
    return 0 if shutdown.is_set() else 1


async def _watchdog(core: Core) -> None:
    while True:
        core.notifier.watchdog()
        await asyncio.sleep(core.config.watchdog_interval)


def run(config: Config) -> int:
    become_subreaper()
    logger.info("torchd %s starting (pid %d)", VERSION, os.getpid())
    return uvloop.run(serve_forever(config))
