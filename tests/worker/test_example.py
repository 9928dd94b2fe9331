"""The example model builds with examples/build.py and serves in a real worker."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.worker.harness import PYTHON, json_request, model_dir_of

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_example_builds_and_serves(tmp_path, spawn):
    subprocess.run([PYTHON, str(EXAMPLES / "build.py"), "--model-store", str(tmp_path)],
                   check=True, capture_output=True, timeout=120)
    model_dir = model_dir_of(tmp_path / "mlp.mar", tmp_path / "models")
    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    assert (manifest["model"]["modelName"], manifest["model"]["modelVersion"]) == ("mlp", "1.0")
    worker = spawn()
    assert worker.load(model_dir, batch_size=2)["ok"]
    rows = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.25, 2.0]]
    _, result = worker.predict([json_request("many", {"data": rows}),
                                json_request("one", rows[0])])
    many, one = (json.loads(r["body"]) for r in result["responses"])
    assert len(many) == 2 and all(len(row) == 3 for row in many)
    assert all(sum(row) == pytest.approx(1.0) for row in many)
    assert one == pytest.approx(many[0])
