"""Write the benchmark's TorchScript MLP, generated deterministically (no committed binaries)."""
from __future__ import annotations

from pathlib import Path

IN_FEATURES = 64
HIDDEN = 256
OUT_FEATURES = 10


def write_mlp(path: Path, seed: int = 0) -> Path:
    """Save a scripted 64-256-10 MLP with fixed weights to ``path`` and return it."""
    import torch  # imported here: the benchmark driver only needs torch to build this file

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(IN_FEATURES, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, OUT_FEATURES),
    ).eval()
    torch.jit.script(model).save(str(path))
    return path


def sample_input() -> list[float]:
    """A fixed request body: IN_FEATURES floats in [-1, 1]."""
    return [round(((i * 37) % 101) / 50.0 - 1.0, 3) for i in range(IN_FEATURES)]


if __name__ == "__main__":
    # Run as a child process by scripts/bench so the driver itself never imports torch.
    import sys

    write_mlp(Path(sys.argv[1]))
