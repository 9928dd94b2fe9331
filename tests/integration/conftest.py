"""Integration fixtures: archives built once per run by the real torch-model-archiver, and a
shared daemon for tests that don't disturb each other."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.archives import MODELS, build_archive, copy_store
from tests.support.daemon import Daemon, running_daemon
from tests.support.handler_archives import build_handler_archives

SIMPLE = ["noop", "echo", "sleep", "stream", "fail513", "fail_plain", "oom", "fail_load",
          "status", "describe", "bad_output", "threads"]


@pytest.fixture(scope="session")
def archive_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test model archived once: <name>.mar, plus mlp_script/mlp_eager with weights."""
    out = tmp_path_factory.mktemp("archives")
    weights = tmp_path_factory.mktemp("weights")
    for name in SIMPLE:
        build_archive(name, out)
    for name in ("mlp_script", "mlp_eager"):
        subprocess.run([sys.executable, str(MODELS / name / "generate.py"), str(weights / name)],
                       check=True, timeout=120)
    build_archive("mlp_script", out, serialized_file=str(weights / "mlp_script" / "mlp_script.pt"))
    build_archive("mlp_eager", out, serialized_file=str(weights / "mlp_eager" / "mlp_eager.pt"),
                  model_file="model.py")
    return out


@pytest.fixture(scope="session")
def handler_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Archives for TorchServe's built-in handlers (tests/support/handler_archives.py) and the
    folder of the weights they were made from: (archives, weights)."""
    weights = tmp_path_factory.mktemp("handler-weights")
    return build_handler_archives(tmp_path_factory.mktemp("handler-archives"), weights), weights


@pytest.fixture(scope="session")
def shared_daemon(archive_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One daemon for tests that register their own uniquely named models and clean up."""
    with running_daemon(archive_dir, tmp_path_factory.mktemp("shared-daemon")) as daemon:
        yield daemon


@pytest.fixture
def make_daemon(archive_dir: Path, tmp_path: Path):
    """A factory for a test's own daemon(s); every process is killed by pid afterwards."""
    made: list[Daemon] = []

    def make(settings: dict | None = None, env: dict | None = None, start: bool = True,
             **start_kwargs) -> Daemon:
        workdir = tmp_path / f"daemon{len(made)}"
        workdir.mkdir()
        daemon = Daemon(workdir, copy_store(archive_dir, workdir / "store"), settings, env)
        made.append(daemon)
        if start:
            daemon.start(**start_kwargs)
        return daemon

    yield make
    for daemon in made:
        daemon.cleanup()
