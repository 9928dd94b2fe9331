"""BaseHandler in-process on each kind of model file it loads (the files from
tests/models/compiled/generate.py), its warm-up, and what it refuses. The same formats run
through the real daemon in tests/integration/test_compiled_models.py."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch._dynamo.utils import counters

from tests.support.archives import MODELS
from worker.runtime.context import Context
from worker.ts.torch_handler.accelerators import MissingPackageError
from worker.ts.torch_handler.base_handler import BaseHandler
from worker.ts.torch_handler.model_files import NO_WEIGHTS
from worker.ts.torch_handler.warm_up import WarmUpError

pytestmark = pytest.mark.timeout(60)
EAGER_MODULE = "formats_test_mlp"   # a module name no other test imports


@pytest.fixture
def model_dir(tmp_path: Path, exported_mlp, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The MLP's files, and its class as module EAGER_MODULE, importable as a worker's model
    directory is (on sys.path)."""
    for name in ("mlp.pt", "mlp.onnx"):
        shutil.copy(exported_mlp.folder / name, tmp_path / name)
    shutil.copy(MODELS / "mlp_eager" / "model.py", tmp_path / f"{EAGER_MODULE}.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop(EAGER_MODULE, None)


def context_for(model_dir: Path, yaml_config: dict | None = None, **files: str) -> Context:
    return Context("m", str(model_dir), {"model": {"modelName": "m", **files}}, 4, None, "test",
                   model_yaml_config=yaml_config or {})


def loaded(context: Context, handler: BaseHandler | None = None) -> BaseHandler:
    handler = handler or BaseHandler()
    handler.initialize(context)
    return handler


def predict(handler: BaseHandler, context: Context, bodies: list[Any]) -> list[Any]:
    context.begin_batch([f"r{i}" for i in range(len(bodies))], [{} for _ in bodies])
    return handler.handle([{"body": body} for body in bodies], context)


def assert_close(actual: Any, expected: Any) -> None:
    assert torch.allclose(torch.tensor(actual), torch.tensor(expected), atol=1e-4), \
        (actual, expected)


def eager(model_dir: Path, yaml_config: dict | None = None) -> Context:
    return context_for(model_dir, yaml_config, modelFile=f"{EAGER_MODULE}.py",
                       serializedFile="mlp.pt")


# ---- ONNX ---------------------------------------------------------------------------------

def test_onnx_session_answers_as_the_eager_model(model_dir, exported_mlp):
    expected = exported_mlp.expected()
    context = context_for(model_dir, serializedFile="mlp.onnx")
    handler = loaded(context)
    assert type(handler.model).__name__ == "InferenceSession"
    options = handler.model.get_session_options()
    assert options.intra_op_num_threads == torch.get_num_threads()   # the worker's share
    assert handler.model.get_providers() == ["CPUExecutionProvider"]
    inputs, outputs = expected["inputs"], expected["outputs"]
    answers = predict(handler, context, [inputs[0], inputs[1:]])
    assert_close(answers[0], outputs[0])
    assert_close(answers[1], outputs[1:])


def test_a_custom_handler_runs_the_session_itself(model_dir, exported_mlp):
    class RunsSession(BaseHandler):
        def inference(self, data, *args, **kwargs):
            return torch.from_numpy(self.model.run(None, {"x": data.numpy()})[0])

    expected = exported_mlp.expected()
    context = context_for(model_dir, serializedFile="mlp.onnx")
    answers = predict(loaded(context, RunsSession()), context, [expected["inputs"][2]])
    assert_close(answers[0], expected["outputs"][2])


def test_an_onnx_model_without_onnxruntime_names_the_package(model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)   # what `import` sees when it is absent
    with pytest.raises(RuntimeError, match=r"mlp.onnx is an ONNX model, which needs onnxruntime "
                                           r"\(pip install torchd\[onnx\]\)"):
        loaded(context_for(model_dir, serializedFile="mlp.onnx"))


# ---- TorchScript and unknown files ----------------------------------------------------------

def test_another_extension_is_still_tried_as_torchscript(model_dir, exported_mlp):
    module = torch.nn.Linear(4, 2).eval()
    torch.jit.save(torch.jit.script(module), str(model_dir / "scripted.pth"))
    context = context_for(model_dir, serializedFile="scripted.pth")
    answers = predict(loaded(context), context, [[1.0, 2.0, 3.0, 4.0]])
    with torch.no_grad():
        assert_close(answers[0], module(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist())


def test_a_file_nothing_loads_is_no_model_weights(model_dir):
    (model_dir / "weights.bin").write_bytes(b"not a model")
    with pytest.raises(RuntimeError, match=f"^{NO_WEIGHTS}: weights.bin is not a TorchScript"):
        loaded(context_for(model_dir, serializedFile="weights.bin"))


def test_ipex_enable_without_ipex_fails_the_load(model_dir):
    context = eager(model_dir)
    context.system_properties["ipex_enable"] = True
    with pytest.raises(MissingPackageError, match="ipex_enable is set but "
                                                  "intel_extension_for_pytorch is not installed"):
        loaded(context)


# ---- warm-up ------------------------------------------------------------------------------

@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def test_warm_up_compiles_one_request_and_a_batch_before_any_client(model_dir, exported_mlp,
                                                                     fresh_dynamo):
    expected = exported_mlp.expected()
    inputs, outputs = expected["inputs"], expected["outputs"]
    context = eager(model_dir, {"pt2": {"compile": {"enable": True, "backend": "aot_eager"}},
                                "handler": {"warmup": [inputs[0], inputs[1]]}})
    handler = loaded(context)
    assert handler.compiled_backend == "aot_eager"
    assert counters["stats"]["unique_graphs"] == 0   # torch.compile is lazy
    handler.warm_up(context)
    assert counters["stats"]["unique_graphs"] == 2   # one request's graph, the batch's graph
    assert context.request_ids is None and context.request_processor == []
    answers = predict(handler, context, [inputs[2], inputs])
    assert_close(answers[0], outputs[2])
    assert_close(answers[1], outputs)
    assert counters["stats"]["unique_graphs"] == 2   # no compile paid by the requests


def test_warm_up_requests_see_a_batch_context(model_dir):
    seen: list[tuple[Any, ...]] = []

    class Recording(BaseHandler):
        def warmup_requests(self):
            return [[1.0, 2.0, 3.0, 4.0], {"data": [0.0, 0.0, 0.0, 1.0]}]

        def handle(self, data, context):
            seen.append((len(data), context.get_request_id(len(data) - 1),
                         context.get_request_header(0, "Content-Type"), data[-1]))
            return super().handle(data, context)

    context = eager(model_dir)
    loaded(context, Recording()).warm_up(context)
    assert seen == [(1, "warmup-1-0", "application/json", {"body": [1.0, 2.0, 3.0, 4.0]}),
                    (1, "warmup-2-0", "application/json", {"body": {"data": [0.0, 0.0, 0.0, 1.0]}}),
                    (2, "warmup-3-1", "application/json", {"body": {"data": [0.0, 0.0, 0.0, 1.0]}})]


def test_a_failing_warm_up_names_the_backend_and_the_cause(model_dir, fresh_dynamo):
    context = eager(model_dir, {"pt2": {"compile": {"enable": True, "backend": "eager"}},
                                "handler": {"warmup": [["not", "numbers"]]}})
    handler = loaded(context)
    with pytest.raises(WarmUpError) as caught:
        handler.warm_up(context)
    message = str(caught.value)
    assert "compiled with backend eager" in message
    assert "PredictionException: input of request 0 is not a list of numbers" in message
    assert context.request_ids is None


def test_warmup_must_be_a_list(model_dir):
    context = eager(model_dir, {"handler": {"warmup": {"body": [1, 2, 3, 4]}}})
    with pytest.raises(ValueError, match="handler.warmup in model-config.yaml should be a list"):
        loaded(context).warm_up(context)


def test_profile_times_each_step(model_dir):
    context = eager(model_dir, {"handler": {"profile": True}})
    predict(loaded(context), context, [[1.0, 2.0, 3.0, 4.0]])
    for step in ("preprocess", "inference", "postprocess"):
        [value] = context.metrics.values(f"ts_handler_{step}")
        assert value >= 0
    plain = eager(model_dir)
    predict(loaded(plain), plain, [[1.0, 2.0, 3.0, 4.0]])
    assert plain.metrics.values("ts_handler_inference") == []
