"""vllm_handler's engine arguments from TorchServe 0.12's model-config keys (a pure mapping:
vLLM itself only runs on GPU machines; tests/integration/test_text_generation.py checks the load
error where it is missing)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from worker.llm.requests import COMPLETIONS, BadRequest, parse_request
from worker.ts.torch_handler.vllm_handler import engine_args, refuse_unfollowed


@dataclass
class AsyncEngineArgs:   # the fields of vLLM's that these tests set
    model: str
    max_num_seqs: int = 256
    max_model_len: int | None = None


VLLM = SimpleNamespace(AsyncEngineArgs=AsyncEngineArgs)


def test_model_path_under_the_archive(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    args = engine_args(VLLM, {"model_path": "weights",
                              "vllm_engine_config": {"max_num_seqs": 4}}, str(tmp_path))
    assert args == AsyncEngineArgs(model=str(tmp_path / "weights"), max_num_seqs=4)


def test_a_model_path_not_in_the_archive_is_passed_as_is(tmp_path: Path) -> None:
    assert engine_args(VLLM, {"model_path": "org/model"}, str(tmp_path)).model == "org/model"


def test_engine_config_model_wins_and_unknown_keys_are_ignored_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        args = engine_args(VLLM, {"model_path": "x", "vllm_engine_config": {
            "model": "/m", "max_model_len": 64, "no_such_field": 1}}, str(tmp_path))
    assert args == AsyncEngineArgs(model="/m", max_model_len=64)
    assert "no_such_field" in caplog.text


def test_no_model_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model_path"):
        engine_args(VLLM, {}, str(tmp_path))


@pytest.mark.parametrize("asked, param", [({"n": 2}, "n"), ({"logprobs": 1}, "logprobs"),
                                          ({"echo": True}, "echo")])
def test_what_it_does_not_pass_to_vllm_yet_is_refused(asked: dict, param: str) -> None:
    request = parse_request(COMPLETIONS, {"prompt": "a", **asked}, "m")
    with pytest.raises(BadRequest) as refused:
        refuse_unfollowed(request)
    assert refused.value.param == param and refused.value.status == 400
    refuse_unfollowed(parse_request(COMPLETIONS, {"prompt": "a"}, "m"))   # the rest goes on
