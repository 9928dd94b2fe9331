"""An event loop on virtual time: when it would sleep, its clock jumps to the next timer.

Timers fire in order at their exact virtual times and a test of delays takes no real time, so
an assertion such as "the batch closed 0.2 s after the second job" is exact, on a loaded machine
too. Real I/O still works: the selector is polled without blocking before the clock jumps.
"""
from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any


class _JumpingSelector(selectors.DefaultSelector):
    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None):   # type: ignore[override]
        events = super().select(0)
        if events or timeout is None or timeout <= 0:
            return events if events or timeout is not None else super().select(None)
        self.loop.now += timeout   # nothing to do until the next timer: go there at once
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self.now = 1000.0

    def time(self) -> float:
        return self.now


def run_on_virtual_time(coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
    """Run ``coro`` to completion on a VirtualTimeLoop (``timeout`` in virtual seconds)."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(asyncio.wait_for(coro, timeout))
