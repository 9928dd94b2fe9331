"""TorchServe's own ``ts`` package (torchserve 0.12.0, no dependencies) in a folder of its own,
for tests of handlers that import the real ``ts`` instead of torchd's alias.

Never installed into the test venv: a worker only sees it with the folder on its PYTHONPATH, a
test process only inside ``real_ts_imported``.
"""
from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TORCHSERVE = "torchserve==0.12.0"
# What pip says when it cannot reach the package index at all.
NO_NETWORK = ("NewConnectionError", "Failed to establish a new connection",
              "Temporary failure in name resolution", "Name or service not known",
              "Network is unreachable", "No route to host", "ConnectTimeoutError",
              "ProxyError", "Connection refused")
_installed: dict[str, Path | str] = {}   # once per test process: the folder or the skip reason


def install_real_ts(target: Path) -> Path:
    """``target`` with TorchServe's ``ts`` package in it; skips the test only when pip cannot
    reach the package index (no network), fails it on any other install error."""
    outcome = _installed.get(TORCHSERVE)
    if outcome is None:
        outcome = _installed[TORCHSERVE] = _install(target)
    if isinstance(outcome, str):
        pytest.skip(outcome)
    return outcome


def _install(target: Path) -> Path | str:
    run = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-input",
         "--disable-pip-version-check", "--retries", "1", "--timeout", "20",
         "--target", str(target), TORCHSERVE],
        capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    if run.returncode == 0 and (target / "ts" / "handler_utils" / "utils.py").is_file():
        return target
    if run.returncode != 0 and any(marker in output for marker in NO_NETWORK):
        return f"cannot install {TORCHSERVE}: no network ({output.strip().splitlines()[-1]})"
    pytest.fail(f"pip install {TORCHSERVE} failed ({run.returncode}):\n{output[-4000:]}")


@contextlib.contextmanager
def real_ts_imported(folder: Path) -> Iterator[None]:
    """Inside: ``import ts...`` in this process loads TorchServe's package from ``folder``.
    After: the ``ts`` modules imported before (torchd's alias, if any) are back."""
    saved = {name: module for name, module in sys.modules.items() if _is_ts(name)}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))
        for name in [name for name in sys.modules if _is_ts(name)]:
            del sys.modules[name]
        sys.modules.update(saved)


def _is_ts(name: str) -> bool:
    return name == "ts" or name.startswith("ts.")
