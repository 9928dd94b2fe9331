"""Fixtures every test package may use."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

COMPILED_MODELS = Path(__file__).resolve().parent / "models" / "compiled"


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/tiny_llm.py's model (tokenizer + 2-layer Llama, random seeded weights), built
    once per run: the directory text_generation's ``handler.model_path`` names."""
    from examples.tiny_llm import build
    return build(tmp_path_factory.mktemp("tiny-llm") / "model")


class ExportedMlp:
    """tests/models/compiled/generate.py's files in ``folder``: mlp.pt (state_dict), mlp.onnx
    and expected.json at once; mlp.pt2 and mlp.so (AOTInductor: 15-30 s of C++ compiling) from
    a process that ``start_aoti()`` starts, so that it runs while other tests do, and that
    ``aoti()`` awaits (starting it if nothing did)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._aoti_run: subprocess.Popen | None = None

    def expected(self) -> dict:
        return json.loads((self.folder / "expected.json").read_text())

    def start_aoti(self) -> None:
        if self._aoti_run is None:
            self._aoti_run = subprocess.Popen(
                [*_generate(self.folder), "aoti"], stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT)

    def aoti(self, timeout: float = 150) -> Path:
        self.start_aoti()
        assert self._aoti_run is not None
        output, _ = self._aoti_run.communicate(timeout=timeout)
        assert self._aoti_run.returncode == 0, output.decode(errors="replace")
        return self.folder

    def close(self) -> None:
        if self._aoti_run is not None and self._aoti_run.poll() is None:
            self._aoti_run.kill()
            self._aoti_run.wait(10)


def _generate(folder: Path) -> list[str]:
    return [sys.executable, str(COMPILED_MODELS / "generate.py"), str(folder)]


@pytest.fixture(scope="session")
def exported_mlp(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("exported-mlp")
    subprocess.run([*_generate(folder), "plain"], check=True, capture_output=True, timeout=120)
    exported = ExportedMlp(folder)
    yield exported
    exported.close()
