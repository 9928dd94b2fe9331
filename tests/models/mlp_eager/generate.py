"""Write OUT_DIR/mlp_eager.pt (a state_dict) and OUT_DIR/expected.json (inputs -> outputs)."""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model import MLP

INPUTS = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.25, 2.0]]


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1234)
    model = MLP().eval()
    torch.save(model.state_dict(), out_dir / "mlp_eager.pt")
    with torch.no_grad():
        outputs = model(torch.tensor(INPUTS)).tolist()
    (out_dir / "expected.json").write_text(json.dumps({"inputs": INPUTS, "outputs": outputs}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
