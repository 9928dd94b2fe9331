"""worker/compile_cache.py: the LOAD frame's compile_cache_dir becomes inductor's cache."""
from __future__ import annotations

import os

import pytest

from worker.compile_cache import INDUCTOR_CACHE_ENV, use_compile_cache

pytestmark = pytest.mark.timeout(10)


def test_a_named_directory_is_made_and_becomes_inductors_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(INDUCTOR_CACHE_ENV, raising=False)
    target = tmp_path / "models" / "compile-cache" / "v1"
    use_compile_cache(str(target))
    assert target.is_dir()
    assert os.environ[INDUCTOR_CACHE_ENV] == str(target)


def test_no_directory_leaves_an_inherited_setting_alone(tmp_path, monkeypatch):
    monkeypatch.setenv(INDUCTOR_CACHE_ENV, str(tmp_path))
    use_compile_cache(None)
    assert os.environ[INDUCTOR_CACHE_ENV] == str(tmp_path)
