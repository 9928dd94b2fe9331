"""Write OUT_DIR/wide.pt: the state_dict of tests/models/wide's nn.Linear(7168, 7168), seeded
(~196 MiB), and OUT_DIR/expected.json: the first 4 outputs for an input of ones."""
import json
import sys
from pathlib import Path

import torch

FEATURES = 7168

if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = torch.nn.Linear(FEATURES, FEATURES)
    state = {"weight": torch.randn(FEATURES, FEATURES) / FEATURES ** 0.5,
             "bias": torch.zeros(FEATURES)}
    model.load_state_dict(state, assign=True)
    torch.save(model.state_dict(), out / "wide.pt")
    with torch.inference_mode():
        head = model(torch.ones(1, FEATURES))[0, :4].tolist()
    (out / "expected.json").write_text(json.dumps({"head": head}))
