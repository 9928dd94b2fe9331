"""Build test archives with the real torch-model-archiver (the tool TorchServe users use)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MODELS = Path(__file__).resolve().parent.parent / "models"
ARCHIVER = Path(sys.executable).with_name("torch-model-archiver")
SUFFIX = {"default": ".mar", "tgz": ".tar.gz", "no-archive": ""}


def run_archiver(cmd: list[str], timeout: float = 120) -> None:
    """Run torch-model-archiver or torch-workflow-archiver in a temporary directory of its
    own: both stage an archive in ``$TMPDIR/<name>`` and delete whatever is there first (a
    test model named "slow" would remove a user's /tmp/slow)."""
    with tempfile.TemporaryDirectory(prefix="archiver-") as staging:
        subprocess.run(cmd, check=True, capture_output=True, timeout=timeout,
                       env={**os.environ, "TMPDIR": staging})


def copy_store(archive_dir: Path, dest: Path) -> Path:
    """A model store of its own for one daemon: every archive file of ``archive_dir`` copied."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in archive_dir.iterdir():
        if item.is_file():
            shutil.copy2(item, dest / item.name)
    return dest


def archive_source(source: str, name: str, out_dir: Path, work: Path,
                   config: str | None = None) -> Path:
    """``source`` (a handler module's text) archived as model ``name``, version 1.0, with
    ``config`` (a model-config.yaml's text) as its config file when given."""
    work.mkdir(parents=True, exist_ok=True)
    handler = work / f"{name}.py"
    handler.write_text(source)
    cmd = [str(ARCHIVER), "--model-name", name, "--version", "1.0", "--handler", str(handler),
           "--export-path", str(out_dir), "--force"]
    if config is not None:
        config_file = work / f"{name}-config.yaml"
        config_file.write_text(config)
        cmd += ["--config-file", str(config_file)]
    run_archiver(cmd)
    return out_dir / f"{name}.mar"


def build_archive(model: str, out_dir: Path, *, name: str | None = None, version: str = "1.0",
                  fmt: str = "default", handler: str = "handler.py",
                  serialized_file: str | None = None, model_file: str | None = None,
                  extra_files: list[str] | None = None, config_file: str | None = None,
                  requirements_file: str | None = None) -> Path:
    """Archive tests/models/<model>/ into out_dir and return the archive's path.

    File arguments are relative to the model's source folder. ``name`` defaults to ``model``.
    """
    src = MODELS / model
    name = name or model
    out_dir.mkdir(parents=True, exist_ok=True)
    # A bare name (image_classifier) is one of TorchServe's built-in handlers, passed as is.
    handler_arg = str(src / handler) if handler.endswith(".py") else handler
    cmd = [str(ARCHIVER), "--model-name", name, "--version", version,
           "--handler", handler_arg, "--export-path", str(out_dir),
           "--archive-format", fmt, "--force"]
    if serialized_file:
        cmd += ["--serialized-file", str(src / serialized_file)]
    if model_file:
        cmd += ["--model-file", str(src / model_file)]
    if extra_files:
        cmd += ["--extra-files", ",".join(str(src / f) for f in extra_files)]
    if config_file:
        cmd += ["--config-file", str(src / config_file)]
    if requirements_file:
        cmd += ["--requirements-file", str(src / requirements_file)]
    target = out_dir / (name + SUFFIX[fmt])
    if fmt == "no-archive" and target.exists():
        shutil.rmtree(target)
    run_archiver(cmd)
    return target
