"""daemon.models.model_config.compiles: which model-config.yaml asks for torch.compile (so the
zygote imports torch's compiler before forking its workers)."""
from __future__ import annotations

import pytest

from daemon.models.model_config import compiles

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize("config, expected", [
    ({}, False), ({"pt2": "inductor"}, True), ({"pt2": ""}, False),
    ({"pt2": {"compile": {"enable": True, "backend": "inductor"}}}, True),
    ({"pt2": {"compile": {"enable": False}}}, False),
    ({"pt2": {"compile": {"backend": "inductor"}}}, False),
    ({"pt2": {"backend": "inductor", "mode": "max-autotune"}}, True),   # the older dict form
    ({"pt2": {"export": {"aot_compile": True}}}, False), ({"pt2": 3}, False)])
def test_compiles_reads_every_pt2_form(config: dict, expected: bool) -> None:
    assert compiles(config) is expected
