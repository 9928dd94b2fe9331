"""Build examples/model_store/mlp.mar: a deterministic TorchScript MLP and its handler.

Run from the repository root with the venv python:  .venv/bin/python examples/build.py
(``--model-store DIR`` writes the archive elsewhere).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

EXAMPLES = Path(__file__).resolve().parent
MODEL_STORE = EXAMPLES / "model_store"
NAME, VERSION = "mlp", "1.0"


def build_model(path: Path) -> None:
    """A 4 -> 16 -> 3 MLP with fixed weights, saved as TorchScript."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 3)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still works
        torch.jit.script(model).save(str(path))


def archiver() -> str:
    beside = Path(sys.executable).with_name("torch-model-archiver")
    found = str(beside) if beside.exists() else shutil.which("torch-model-archiver")
    if not found:
        sys.exit("torch-model-archiver not found: pip install torch-model-archiver==0.12.0")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-store", type=Path, default=MODEL_STORE,
                        help="where to write mlp.mar (default: examples/model_store)")
    store = parser.parse_args().model_store
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "mlp.pt"
        build_model(weights)
        # the archiver stages in $TMPDIR/<name>, deleting what is there first: its own
        subprocess.run([archiver(), "--model-name", NAME, "--version", VERSION,
                        "--serialized-file", str(weights),
                        "--handler", str(EXAMPLES / "mlp_handler.py"),
                        "--export-path", str(store), "--force"], check=True,
                       env={**os.environ, "TMPDIR": tmp})
    print(f"wrote {store / (NAME + '.mar')}")


if __name__ == "__main__":
    main()
