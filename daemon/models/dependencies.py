"""install_py_dep_per_model: an archive's requirements file installed for its workers alone.

The packages go into a directory of their own (``pip install --target``), never into torchd's
environment; that model's workers are exec-spawned with the directory first on ``sys.path``,
since a worker forked from the zygote has already imported what a requirement might replace.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from daemon.errors import InvalidModel

logger = logging.getLogger(__name__)
PIP_TIMEOUT = 600.0


def install_requirements(model_dir: Path, requirements: str, work_root: Path,
                         model_name: str) -> Path:
    """Install ``requirements`` (relative to the model dir, where pip runs) into a new directory
    under ``work_root`` and return it; InvalidModel with pip's last words when that fails."""
    target = Path(tempfile.mkdtemp(prefix=f"{model_name}-deps-", dir=work_root))
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-input",
               "--disable-pip-version-check", "--target", str(target), "-r", requirements]
    logger.info("installing the requirements of %s: %s", model_name, requirements)
    try:
        done = subprocess.run(command, cwd=model_dir, capture_output=True, text=True,
                              timeout=PIP_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        shutil.rmtree(target, ignore_errors=True)
        raise InvalidModel(f"Installing the requirements of model {model_name} took longer "
                           f"than {PIP_TIMEOUT:g} s") from None
    if done.returncode != 0:
        shutil.rmtree(target, ignore_errors=True)
        last = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise InvalidModel(f"Failed to install the requirements of model {model_name}: "
                           + " | ".join(last))
    return target


def remove_installed(target: Path | None) -> None:
    if target is not None:
        shutil.rmtree(target, ignore_errors=True)
