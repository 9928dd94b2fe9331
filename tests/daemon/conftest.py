"""Archive fixtures for the archive and download tests: built once per session with the real
torch-model-archiver, copied per test so tests can move and delete them freely."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.archives import build_archive

BASIC_VERSION = "2.5"
BASIC_FILES = ("handler.py", "weights.bin", "labels.json", "model-config.yaml",
               "requirements.txt", "MAR-INF/MANIFEST.json")
FORMATS = ("default", "tgz", "no-archive")


@pytest.fixture(scope="session")
def basic_archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """tests/models/archive_basic archived as .mar, .tar.gz and a no-archive directory."""
    out = tmp_path_factory.mktemp("basic-archives")
    return {fmt: build_archive("archive_basic", out / fmt, name="basic", version=BASIC_VERSION,
                               fmt=fmt, serialized_file="weights.bin",
                               extra_files=["labels.json"], config_file="model-config.yaml",
                               requirements_file="requirements.txt")
            for fmt in FORMATS}


@pytest.fixture
def model_store(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    store.mkdir()
    return store


@pytest.fixture
def extract_root(tmp_path: Path) -> Path:
    return tmp_path / "extracted"


@pytest.fixture
def store_copy(basic_archives: dict[str, Path], model_store: Path):
    """Copy one of the basic archives into the model store; returns its plain name."""
    def copy(fmt: str, name: str | None = None) -> str:
        src = basic_archives[fmt]
        name = name or src.name
        if src.is_dir():
            shutil.copytree(src, model_store / name)
        else:
            shutil.copyfile(src, model_store / name)
        return name
    return copy
