"""The pure parts of compiled and exported models: model-config.yaml's ``pt2`` section read into
"compile with these arguments / do not compile / refuse", the backends TorchServe allows and
the packages some of them need, and which file of an archive is its model."""
from __future__ import annotations

import copy
import logging

import pytest
import torch

from worker.ts.torch_handler.accelerators import MissingPackageError, import_backend_package
from worker.ts.torch_handler.model_files import NO_WEIGHTS, ModelFormat, model_format
from worker.ts.torch_handler.pt2 import (Pt2ConfigError, compile_model, compile_plan,
                                         uses_aot_compile)
from worker.ts.utils.util import PT2Backend, check_valid_pt2_backend

pytestmark = pytest.mark.timeout(60)

# TorchServe 0.12's ts.utils.util.PT2Backend, value for value
TORCHSERVE_BACKENDS = ["eager", "aot_eager", "inductor", "nvfuser", "aot_nvfuser",
                       "aot_cudagraphs", "ofi", "fx2trt", "onnxrt", "ipex", "torchxla_trace_once",
                       "openvino", "tensorrt", "hpu_backend"]


def test_the_allowed_backends_are_torchserves():
    assert [member.value for member in PT2Backend] == TORCHSERVE_BACKENDS
    assert PT2Backend("inductor") == "inductor"
    assert check_valid_pt2_backend("inductor") and check_valid_pt2_backend(PT2Backend.EAGER)


def test_an_unknown_backend_is_not_valid_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert not check_valid_pt2_backend("fancy")
        assert not check_valid_pt2_backend({"not": "hashable"})
    assert "fancy is not a supported pt2 backend" in caplog.text


def test_compile_section_enabled_gives_its_other_keys_to_torch_compile():
    config = {"pt2": {"compile": {"enable": True, "backend": "inductor", "mode": "max-autotune",
                                  "fullgraph": True, "options": {"epilogue_fusion": True}}}}
    before = copy.deepcopy(config)
    plan = compile_plan(config)
    assert plan.kwargs == {"backend": "inductor", "mode": "max-autotune", "fullgraph": True,
                           "options": {"epilogue_fusion": True}}
    assert plan.backend == "inductor" and not plan.deprecated
    assert "backend=inductor" in plan.describe() and "mode=max-autotune" in plan.describe()
    assert config == before   # TorchServe deletes "enable" from the user's dict; torchd does not


def test_compile_section_without_a_backend_uses_torch_compiles_default():
    plan = compile_plan({"pt2": {"compile": {"enable": True}}})
    assert plan.kwargs == {} and plan.backend == "inductor"


@pytest.mark.parametrize("section", [{"enable": False, "backend": "inductor"},
                                     {"backend": "inductor"}, {"enable": "true"}])
def test_compile_only_when_enable_is_true(section):
    assert compile_plan({"pt2": {"compile": section}}).kwargs is None


@pytest.mark.parametrize("config", [None, {}, {"minWorkers": 1},
                                    {"pt2": {"export": {"aot_compile": True}}}])
def test_no_compile_without_pt2_or_with_export(config):
    assert compile_plan(config).kwargs is None


def test_an_unknown_backend_is_not_compiled():
    assert compile_plan({"pt2": {"compile": {"enable": True, "backend": "fancy"}}}).kwargs is None
    assert compile_plan({"pt2": "fancy"}).kwargs is None


@pytest.mark.parametrize(("pt2", "kwargs"), [
    ("inductor", {"backend": "inductor"}),
    ({"backend": "aot_eager", "mode": "default"}, {"backend": "aot_eager", "mode": "default"}),
    ({}, {}),   # TorchServe compiles with torch.compile's defaults
])
def test_the_older_forms_still_compile_with_a_deprecation_warning(pt2, kwargs, caplog):
    with caplog.at_level(logging.WARNING):
        plan = compile_plan({"pt2": pt2})
    assert plan.kwargs == kwargs and plan.deprecated
    assert "deprecated form" in caplog.text


@pytest.mark.parametrize("pt2", [None, 3, ["inductor"], True])
def test_a_pt2_that_is_neither_str_nor_dict_is_refused(pt2):
    with pytest.raises(Pt2ConfigError, match="should be a str or a dict"):
        compile_plan({"pt2": pt2})


def test_a_compile_section_that_is_not_a_dict_is_refused():
    with pytest.raises(Pt2ConfigError, match="pt2.compile"):
        compile_plan({"pt2": {"compile": True}})


@pytest.mark.parametrize(("config", "expected"), [
    ({"pt2": {"export": {"aot_compile": True}}}, True),
    ({"pt2": {"export": {"aot_compile": False}}}, False),
    ({"pt2": {"export": {}}}, False),
    ({"pt2": "inductor"}, False),
    ({}, False),
])
def test_aot_compile_flag(config, expected):
    assert uses_aot_compile(config) is expected


def test_a_backend_whose_package_is_missing_names_both():
    with pytest.raises(MissingPackageError) as caught:
        import_backend_package("tensorrt")
    assert "pt2 backend tensorrt needs the package torch_tensorrt" in str(caught.value)
    import_backend_package("inductor")   # torch's own: nothing to import
    import_backend_package("onnxrt")     # installed here


def test_compile_model_compiles_and_falls_back_to_eager_when_torch_compile_refuses(caplog):
    model = torch.nn.Linear(2, 2)
    compiled, done = compile_model(model, compile_plan(
        {"pt2": {"compile": {"enable": True, "backend": "eager"}}}))
    assert done and type(compiled).__name__ == "OptimizedModule"
    with caplog.at_level(logging.WARNING):
        same, done = compile_model(model, compile_plan(
            {"pt2": {"compile": {"enable": True, "backend": "inductor", "mode": "bogus"}}}))
    assert same is model and not done
    assert "serves without compiling" in caplog.text and "mode=bogus" in caplog.text


# ---- which file is the model --------------------------------------------------------------

@pytest.mark.parametrize(("model_file", "serialized", "aot", "expected"), [
    ("model.py", "weights.onnx", True, ModelFormat.EAGER),   # modelFile first, whatever else
    (None, "model.pt", False, ModelFormat.TORCHSCRIPT),
    (None, "model.onnx", False, ModelFormat.ONNX),
    (None, "model.pt2", False, ModelFormat.AOTI_PACKAGE),
    (None, "model.so", True, ModelFormat.AOT_LIBRARY),
    (None, "model.pth", False, ModelFormat.OTHER),   # torchd: still tried as TorchScript
    (None, "model.ts", False, ModelFormat.OTHER),
])
def test_model_file_choice_order(model_file, serialized, aot, expected):
    assert model_format(model_file, serialized, aot) is expected


def test_a_library_without_aot_compile_or_no_file_at_all_loads_nothing():
    with pytest.raises(RuntimeError, match=f"^{NO_WEIGHTS}: model.so is a .so"):
        model_format(None, "model.so", False)
    with pytest.raises(RuntimeError, match=f"^{NO_WEIGHTS}: the manifest names neither"):
        model_format(None, None, False)
