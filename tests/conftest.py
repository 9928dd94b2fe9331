"""Fixtures every test package may use."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/tiny_llm.py's model (tokenizer + 2-layer Llama, random seeded weights), built
    once per run: the directory text_generation's ``handler.model_path`` names."""
    from examples.tiny_llm import build
    return build(tmp_path_factory.mktemp("tiny-llm") / "model")
