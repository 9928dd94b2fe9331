"""The daemon's private runtime dir, and the removal of those left by daemons killed -9."""
from __future__ import annotations

import os
import tempfile

from daemon.ops.process import RUNTIME_PREFIX, make_runtime_dir


def test_stale_runtime_dirs_of_dead_daemons_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / f"{RUNTIME_PREFIX}999999999-abc"
    (dead / "models" / "m").mkdir(parents=True)
    alive = tmp_path / f"{RUNTIME_PREFIX}{os.getppid()}-def"
    alive.mkdir()
    other = tmp_path / "torchd-unrelated"
    other.mkdir()
    mine = make_runtime_dir()
    assert mine.parent == tmp_path and mine.name.startswith(f"{RUNTIME_PREFIX}{os.getpid()}-")
    assert not dead.exists()
    assert alive.exists() and other.exists()
