"""OIP tensors between gRPC messages and handler JSON (daemon/rpc/tensors.py): the checks in
tensors_checks.py, run in a process of their own (see there why)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_tensor_conversions() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "tests.daemon.rpc.tensors_checks"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "tensors: ok"
