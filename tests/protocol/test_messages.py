"""protocol.messages: the SPAWN frame's compiler flag and the pt2 forms that set it."""
from __future__ import annotations

import pytest

from protocol import messages

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize("config, expected", [
    ({}, False), ({"pt2": "inductor"}, True), ({"pt2": ""}, False),
    ({"pt2": {"compile": {"enable": True, "backend": "inductor"}}}, True),
    ({"pt2": {"compile": {"enable": False}}}, False),
    ({"pt2": {"compile": {"backend": "inductor"}}}, False),
    ({"pt2": {"backend": "inductor", "mode": "max-autotune"}}, True),   # the older dict form
    ({"pt2": {"export": {"aot_compile": True}}}, False), ({"pt2": 3}, False)])
def test_compiles_reads_every_pt2_form(config: dict, expected: bool) -> None:
    assert messages.compiles(config) is expected


def test_spawn_asks_for_the_compiler_only_when_the_model_compiles() -> None:
    assert "compiler" not in messages.spawn("9000", "/s", "t", 1)
    assert messages.spawn("9000", "/s", "t", 1, compiler=True)["compiler"] is True
    load = {"model_yaml_config": {"pt2": "inductor"}}
    assert messages.spawn_template("t1", "/s", "t", 1, load)["compiler"] is True
    assert "compiler" not in messages.spawn_template("t1", "/s", "t", 1, {})
