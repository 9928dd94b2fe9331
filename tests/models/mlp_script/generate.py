"""Write OUT_DIR/mlp_script.pt (TorchScript) and OUT_DIR/expected.json (inputs -> outputs)."""
import json
import sys
import warnings
from pathlib import Path

import torch

INPUTS = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.25, 2.0]]


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(4321)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(),
                                torch.nn.Linear(8, 3)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still works
        torch.jit.script(model).save(str(out_dir / "mlp_script.pt"))
    with torch.no_grad():
        outputs = model(torch.tensor(INPUTS)).tolist()
    (out_dir / "expected.json").write_text(json.dumps({"inputs": INPUTS, "outputs": outputs}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
