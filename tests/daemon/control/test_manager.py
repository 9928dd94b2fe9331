"""ModelManager with a stand-in Supervisor: what a restore registers, and what a removal (an
unregister, or the rollback of a synchronous register whose workers failed) leaves behind in
the snapshots and the metrics."""
from __future__ import annotations

import asyncio
import json
import zipfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from daemon.config.settings import load_config
from daemon.errors import Conflict, InternalServerError
from daemon.metrics import Metrics
from daemon.control.manager import ModelManager
from daemon.models.model_config import ConfigRefused
from daemon.models.requests import RegisterRequest
from daemon.models.registry import ModelVersion, Registry
from daemon.models.snapshots import SnapshotStore
from daemon.workers.records import ScaleOutcome


class StandInSupervisor:
    """Records scale calls; every start fails or succeeds as told; records series the way the
    real Supervisor and a scrape would while the version is registered."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.scaled: list[tuple[str, int, int]] = []
        self.outcome = ScaleOutcome(ready=1, target=1)
        self.while_draining: Callable[[], Awaitable[None]] | None = None

    def scale(self, mv: ModelVersion, stop_timeout: float | None = None) -> None:
        # the range is the registry's, written by the manager before it calls scale
        self.scaled.append((mv.name, mv.settings.min_workers, mv.settings.max_workers))

    async def wait_for_workers(self, mv: ModelVersion, timeout: float) -> ScaleOutcome:
        self.metrics.set_worker_states(mv.name, mv.version, {"FAILED": 1})
        self.metrics.worker_restarted(mv.name, mv.version)
        return self.outcome

    async def drain(self, mv: ModelVersion, timeout: float) -> None:
        if self.while_draining is not None:
            await self.while_draining()


def write_mar(path: Path, name: str) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("MAR-INF/MANIFEST.json",
                         json.dumps({"model": {"modelName": name, "handler": "handler.py"}}))
    return path


@pytest.fixture
def world(tmp_path: Path) -> SimpleNamespace:
    store = tmp_path / "store"
    store.mkdir()
    write_mar(store / "m.mar", "m")
    config = load_config({"model_store": str(store), "allowed_urls": "file://.*"}, {}, tmp_path)
    registry, metrics = Registry(), Metrics(hostname="host")
    supervisor = StandInSupervisor(metrics)
    snapshots = SnapshotStore(tmp_path / "config")
    manager = ModelManager(config, registry, supervisor, tmp_path / "extracted",
                           snapshots=snapshots, metrics=metrics)
    return SimpleNamespace(store=store, registry=registry, metrics=metrics, manager=manager,
                           supervisor=supervisor, snapshots=snapshots)


def lines_of(metrics: Metrics, model: str) -> list[str]:
    text = metrics.render()[0].decode()
    return [line for line in text.splitlines() if f'model_name="{model}"' in line]


def newest_models(world: SimpleNamespace) -> set[str]:
    return set(world.snapshots.load()[1]["models"])


def test_restore_registers_a_download_from_its_copy_and_starts_its_workers(world) -> None:
    url = "https://models.example.invalid/dl.mar"   # not allowed, and nowhere to fetch from
    write_mar(world.store / "dl.mar", "dl")
    req = RegisterRequest(url=url, model_name="dl", initial_workers=2, max_workers=3,
                          synchronous=False, downloaded_copy="dl.mar")
    mv = asyncio.run(world.manager.restore(req))
    assert world.registry.get("dl") is mv
    assert mv.url == url and mv.archive.downloaded is True
    assert mv.archive.source == world.store / "dl.mar"
    assert world.supervisor.scaled == [("dl", 2, 3)]


def test_a_failed_restore_keeps_the_downloaded_copy(world) -> None:
    write_mar(world.store / "dl.mar", "m")   # a second "m 1.0": refused
    asyncio.run(world.manager.register(RegisterRequest(url="m.mar", initial_workers=0)))
    req = RegisterRequest(url="https://models.example.invalid/dl.mar", synchronous=False,
                          downloaded_copy="dl.mar")
    with pytest.raises(Conflict):
        asyncio.run(world.manager.restore(req))
    assert (world.store / "dl.mar").is_file()   # the snapshot still names it


def test_unregister_forgets_the_metrics_of_the_version(world) -> None:
    assert asyncio.run(world.manager.register(
        RegisterRequest(url="m.mar", initial_workers=1))).status == 200
    world.metrics.observe_request("m", "1.0", 200, 10, 100, named_version=False)
    world.metrics.observe_batch("m", "1.0", 1)
    assert len(lines_of(world.metrics, "m")) > 10
    asyncio.run(world.manager.unregister("m", None))
    assert lines_of(world.metrics, "m") == []
    assert newest_models(world) == set()


def test_a_version_registered_again_while_draining_keeps_its_series(world) -> None:
    async def register_again() -> None:
        await world.manager.register(RegisterRequest(url="m.mar", initial_workers=0))
        world.metrics.observe_request("m", "1.0", 200, 10, 100)

    async def scenario() -> None:
        await world.manager.register(RegisterRequest(url="m.mar", initial_workers=0))
        world.supervisor.while_draining = register_again
        await world.manager.unregister("m", None)

    asyncio.run(scenario())
    assert world.registry.get("m", "1.0")
    assert any(line.startswith("ts_inference_requests_total")
               for line in lines_of(world.metrics, "m"))


def register_with_failing_workers(world: SimpleNamespace) -> None:
    world.supervisor.outcome = ScaleOutcome(ready=0, target=1, error="load failed")
    with pytest.raises(InternalServerError, match="load failed"):
        asyncio.run(world.manager.register(RegisterRequest(url="m.mar", initial_workers=1)))
    assert world.supervisor.scaled == [("m", 1, 1)]
    assert world.registry.defaults() == []


def test_a_rolled_back_register_is_gone_from_the_newest_snapshot(world) -> None:
    register_with_failing_workers(world)
    assert newest_models(world) == set()   # written after the rollback, before the 500


def test_a_rolled_back_register_leaves_no_series(world) -> None:
    register_with_failing_workers(world)
    assert lines_of(world.metrics, "m") == []


def test_a_refused_model_config_leaves_nothing_behind(world, tmp_path) -> None:
    with zipfile.ZipFile(world.store / "tp.mar", "w") as archive:
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {
            "modelName": "tp", "handler": "handler.py", "configFile": "model-config.yaml"}}))
        archive.writestr("model-config.yaml", "parallelType: tp\nparallelLevel: 2\n")
    with pytest.raises(ConfigRefused, match="parallelType tp with parallelLevel 2"):
        asyncio.run(world.manager.register(RegisterRequest(url="tp.mar", initial_workers=1)))
    assert world.registry.defaults() == [] and world.supervisor.scaled == []
    assert list((tmp_path / "extracted").glob("*")) == []     # the extracted copy is gone
