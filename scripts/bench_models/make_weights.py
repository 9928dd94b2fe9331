"""Write the compiled and preload rounds' state_dicts, generated deterministically.

    python make_weights.py OUT_DIR   ->  OUT_DIR/compiled_mlp.pt, OUT_DIR/big_linear.pt

Run as a child process by scripts/bench, so the driver itself never imports torch.
"""
from __future__ import annotations

import sys
from pathlib import Path


def write_weights(out: Path, seed: int = 0) -> dict[str, Path]:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from big_model import BigLinear
    from compiled_model import CompiledMLP

    torch.manual_seed(seed)
    paths = {"compiled_mlp": out / "compiled_mlp.pt", "big_linear": out / "big_linear.pt"}
    torch.save(CompiledMLP().state_dict(), paths["compiled_mlp"])
    torch.save(BigLinear().state_dict(), paths["big_linear"])
    return paths


def sample_row(width: int) -> list[float]:
    """A fixed input row of ``width`` floats in [-1, 1]."""
    return [round(((i * 37) % 101) / 50.0 - 1.0, 3) for i in range(width)]


if __name__ == "__main__":
    write_weights(Path(sys.argv[1]))
