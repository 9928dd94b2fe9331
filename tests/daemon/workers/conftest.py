"""The Supervisor tests' fixture (the fakes and the Harness are in supervisor_harness.py)."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest


@pytest.fixture
def runtime_dir():
    # Short: Unix socket paths are limited to ~107 bytes, pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="sv-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
