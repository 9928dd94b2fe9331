"""BaseHandler under TorchServe's ENABLE_TORCH_PROFILER (worker/ts/torch_handler/profiling.py),
in-process with a real TorchScript model and torch's real profiler. Through the daemon, with the
variable in its environment: tests/integration/test_compiled_models.py."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from worker.runtime.context import Context
from worker.ts.torch_handler import profiling
from worker.ts.torch_handler.base_handler import BaseHandler

pytestmark = pytest.mark.timeout(60)
ROW = [1.0, 2.0, 3.0, 4.0]


@pytest.fixture
def served(tmp_path: Path):
    module = torch.nn.Linear(4, 2).eval()
    torch.jit.save(torch.jit.script(module), str(tmp_path / "linear.pt"))
    context = Context("lin", str(tmp_path), {"model": {"modelName": "lin",
                                                       "serializedFile": "linear.pt"}},
                      1, None, "test")
    handler = BaseHandler()
    handler.initialize(context)
    with torch.no_grad():
        expected = module(torch.tensor(ROW)).tolist()
    return handler, context, expected


def predict(handler: BaseHandler, context: Context) -> list:
    context.begin_batch(["r0"], [{}])
    return handler.handle([{"body": ROW}], context)


def test_each_batch_is_traced_in_the_models_directory(served, tmp_path, monkeypatch, caplog):
    handler, context, expected = served
    monkeypatch.setattr(profiling, "TRACE_ROOT", str(tmp_path / "traces"))
    monkeypatch.setenv(profiling.PROFILER_ENV, "TRUE")
    caplog.set_level(logging.INFO, logger=profiling.__name__)
    answers = predict(handler, context)
    assert torch.allclose(torch.tensor(answers[0]), torch.tensor(expected), atol=1e-6)
    [trace] = (tmp_path / "traces" / "lin").glob("*.pt.trace.json")
    names = {event.get("name") for event in json.loads(trace.read_text())["traceEvents"]}
    assert {"preprocess", "inference", "postprocess"} <= names
    assert "profile of the batch" in caplog.text
    predict(handler, context)
    assert len(list((tmp_path / "traces" / "lin").glob("*.pt.trace.json"))) == 2


def test_the_handlers_own_profiler_args_win(served, tmp_path, monkeypatch):
    handler, context, _ = served
    monkeypatch.setattr(profiling, "TRACE_ROOT", str(tmp_path / "traces"))
    monkeypatch.setenv(profiling.PROFILER_ENV, "1")
    ready = []
    handler.profiler_args = {"activities": [torch.profiler.ProfilerActivity.CPU],
                             "on_trace_ready": ready.append}
    predict(handler, context)
    assert len(ready) == 1 and not (tmp_path / "traces").exists()


def test_off_without_the_variable(served, tmp_path, monkeypatch):
    handler, context, expected = served
    monkeypatch.setattr(profiling, "TRACE_ROOT", str(tmp_path / "traces"))
    monkeypatch.delenv(profiling.PROFILER_ENV, raising=False)
    assert torch.allclose(torch.tensor(predict(handler, context)[0]), torch.tensor(expected),
                          atol=1e-6)
    assert not (tmp_path / "traces").exists()
