"""protocol.messages: the SPAWN frame's compiler flag."""
from __future__ import annotations

import pytest

from protocol import messages

pytestmark = pytest.mark.timeout(10)


def test_spawn_asks_for_the_compiler_only_when_told() -> None:
    assert "compiler" not in messages.spawn("9000", "/s", "t", 1)
    assert messages.spawn("9000", "/s", "t", 1, compiler=True)["compiler"] is True
    assert messages.spawn_template("t1", "/s", "t", 1, {}, compiler=True)["compiler"] is True
    assert "compiler" not in messages.spawn_template("t1", "/s", "t", 1, {})
