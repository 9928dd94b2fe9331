"""Session-scoped archives (built once with the real torch-model-archiver) and worker starters."""
from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.archives import MODELS, build_archive
from tests.worker.harness import PYTHON, FakeDaemon, WorkerHandle, ZygoteHandle, model_dir_of

FORMATS = ("default", "tgz", "no-archive")
GENERATED = ("mlp_eager", "mlp_script")
_worker_ids = itertools.count(9000)


def next_worker_id() -> str:
    return str(next(_worker_ids))


class ModelStore:
    """Builds each (model, format) archive once, extracts it, and hands out the model dir."""

    def __init__(self, root: Path, generated: Path) -> None:
        self.root = root
        self.generated = generated
        self._dirs: dict[tuple[str, str], Path] = {}

    def archive_args(self, model: str) -> dict[str, Any]:
        if model == "mlp_eager":
            return {"model_file": "model.py",
                    "serialized_file": str(self.generated / model / "mlp_eager.pt")}
        if model == "mlp_script":
            return {"serialized_file": str(self.generated / model / "mlp_script.pt")}
        return {}

    def model_dir(self, model: str, fmt: str = "default") -> Path:
        key = (model, fmt)
        if key not in self._dirs:
            archive = build_archive(model, self.root / "archives" / fmt,
                                    fmt=fmt, **self.archive_args(model))
            self._dirs[key] = model_dir_of(archive, self.root / "models" / fmt / model)
        return self._dirs[key]

    def expected(self, model: str) -> dict[str, Any]:
        return json.loads((self.generated / model / "expected.json").read_text())


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("generated")
    # Both at once: each pays torch's import time.
    runs = [subprocess.Popen([PYTHON, str(MODELS / model / "generate.py"), str(out / model)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for model in GENERATED]
    for run in runs:
        output, _ = run.communicate(timeout=120)
        assert run.returncode == 0, output.decode(errors="replace")
    return out


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory, generated: Path) -> ModelStore:
    return ModelStore(tmp_path_factory.mktemp("store"), generated)


@pytest.fixture(scope="session")
def session_daemon() -> FakeDaemon:
    daemon = FakeDaemon()
    yield daemon
    daemon.close()


@pytest.fixture(scope="session")
def zygote(session_daemon: FakeDaemon) -> ZygoteHandle:
    """One zygote shared by the session (tests that kill a zygote start their own)."""
    return session_daemon.start_zygote()


@pytest.fixture
def daemon() -> FakeDaemon:
    daemon = FakeDaemon()
    yield daemon
    daemon.close()


Spawner = Callable[..., WorkerHandle]


@pytest.fixture
def spawn(zygote: ZygoteHandle, daemon: FakeDaemon) -> Spawner:
    """spawn(mode="zygote"|"exec") -> a greeted worker; every worker is killed at teardown."""
    started: list[WorkerHandle] = []

    def start(mode: str = "zygote", **kwargs: Any) -> WorkerHandle:
        worker_id = next_worker_id()
        if mode == "exec":
            worker = daemon.spawn_exec(worker_id, **kwargs)
        else:
            worker = zygote.spawn(worker_id, **kwargs)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


@pytest.fixture
def loaded(spawn: Spawner, store: ModelStore) -> Callable[..., WorkerHandle]:
    """loaded(model, fmt="default", mode="zygote", **load_kwargs) -> a worker that is READY."""

    def start(model: str, fmt: str = "default", mode: str = "zygote",
              **load_kwargs: Any) -> WorkerHandle:
        worker = spawn(mode)
        answer = worker.load(store.model_dir(model, fmt), **load_kwargs)
        assert answer["ok"], answer
        return worker

    return start
