"""Handler tests written for TorchServe run unchanged in a project with torchd installed: the
pytest plugin (worker/pytest_ts.py) makes ``import ts...`` torchd's, and ``MockContext``
(ts.torch_handler.unit_tests.test_utils.mock_context) is there. Proven by running pytest on
such a test file in a separate process, outside this repository."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

HANDLER_TEST = '''
import torch

from ts.torch_handler.base_handler import BaseHandler
from ts.torch_handler.unit_tests.test_utils.mock_context import MockContext


class Doubler(BaseHandler):
    def preprocess(self, data):
        return torch.tensor([row["data"] for row in data], dtype=torch.float32)

    def postprocess(self, data):
        return data.tolist()


def test_a_handler_initializes_and_handles_with_the_mock_context(tmp_path):
    linear = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        linear.weight.fill_(2.0)
    torch.jit.script(linear).save(str(tmp_path / "model.pt"))
    (tmp_path / "model-config.yaml").write_text("handler:\\n  mode: double\\n")
    ctx = MockContext(model_pt_file="model.pt", model_dir=str(tmp_path), model_file=None,
                      model_yaml_config_file="model-config.yaml")
    assert ctx.manifest == {"model": {"serializedFile": "model.pt"}}
    assert ctx.system_properties == {"model_dir": str(tmp_path)}   # no CUDA here
    assert ctx.model_yaml_config == {"handler": {"mode": "double"}}
    assert ctx.get_request_header(0, "explain") is False

    handler = Doubler()
    handler.initialize(ctx)
    assert handler.handle([{"data": [1.0, 2.0]}, {"data": [3.0, 0.5]}], ctx) == [[6.0], [7.0]]


def test_the_defaults_are_torchserves():
    ctx = MockContext()
    assert ctx.manifest == {"model": {"serializedFile": "model.pt", "modelFile": "model.py"}}
    assert ctx.system_properties["model_dir"] == "ts/torch_handler/unit_tests/models/tmp"
    assert ctx.model_name == "mnist" and ctx.model_yaml_config == {} and ctx.explain is False
'''


def run_pytest(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *args, "test_handler.py"], cwd=folder, capture_output=True,
                          text=True, timeout=100)


def test_a_torchserve_handler_test_runs_under_pytest_with_torchd_installed(tmp_path):
    (tmp_path / "test_handler.py").write_text(HANDLER_TEST)
    result = run_pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
    # the plugin is what makes `ts` importable there
    without = run_pytest(tmp_path, "-p", "no:torchd_ts")
    assert without.returncode != 0 and "No module named 'ts'" in without.stdout
