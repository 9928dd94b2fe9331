"""daemon/models/requests.py: the ranges of register and scale parameters, and TorchServe's
rule for model names and versions."""
from __future__ import annotations

import pytest

from daemon.errors import BadRequest
from daemon.models.requests import (MAX_NAME, RegisterRequest, check_name, check_parameters,
                                    check_scale_timeout)


@pytest.mark.parametrize("name", ["noop", "a", "resnet-18_v1.2", "9lives", "w__node",
                                  "x" * MAX_NAME])
def test_names_torchserve_allows(name: str) -> None:
    check_name("model name", name)


@pytest.mark.parametrize("name", ["", "-a", ".", "..", "a/b", "a b", "a\nb", "a\x00b", "é",
                                  "a:b", "x" * (MAX_NAME + 1)])
def test_names_torchserve_refuses(name: str) -> None:
    with pytest.raises(BadRequest) as refused:
        check_name("model name", name)
    assert refused.value.message.startswith("Invalid model name: ")
    assert "\n" not in refused.value.message and "\x00" not in refused.value.message
    assert len(refused.value.message) < 250


@pytest.mark.parametrize(("given", "named"), [
    ({"batch_size": 0}, "batch_size"), ({"max_batch_delay": -1}, "max_batch_delay"),
    ({"response_timeout": -2}, "response_timeout"), ({"startup_timeout": -9}, "startup_timeout"),
    ({"model_name": "a/b"}, "model name")])
def test_register_parameters_out_of_range(given: dict, named: str) -> None:
    with pytest.raises(BadRequest, match=named):
        check_parameters(RegisterRequest(url="m.mar", **given))


@pytest.mark.parametrize("given", [
    {}, {"batch_size": 1}, {"max_batch_delay": 0}, {"response_timeout": -1},
    {"response_timeout": 0}, {"startup_timeout": 0}, {"initial_workers": -2}])
def test_register_parameters_torchserve_accepts(given: dict) -> None:
    check_parameters(RegisterRequest(url="m.mar", **given))


def test_scale_timeout() -> None:
    for fine in (-1, 0, 30):
        check_scale_timeout(fine)
    with pytest.raises(BadRequest, match="timeout"):
        check_scale_timeout(-2)
