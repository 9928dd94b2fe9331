"""The one way tests wait for eventually-consistent state: poll a check until it holds.

Every wait in the suite goes through here (``wait_until`` in threads, ``until`` inside an event
loop), so each has a deadline and fails the same way: a TimeoutError naming what was awaited and
the last value the check returned. Never wait with a bare sleep: wait for the state (or for an
event that must come first, before asserting that something did *not* happen).
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable


class _Poll:
    """One wait's deadline, last value and failure message."""

    def __init__(self, check: Callable[[], Any], timeout: float, what: Any,
                 clock: Callable[[], float]) -> None:
        self.check, self.timeout, self.what, self.clock = check, timeout, what, clock
        self.deadline = clock() + timeout
        self.value: Any = None

    def holds(self) -> bool:
        """True once ``check()`` gives a truthy value; raises once the deadline has passed."""
        self.value = self.check()
        if self.value:
            return True
        if self.clock() > self.deadline:
            reason = self.what() if callable(self.what) else self.what
            raise TimeoutError(f"{reason} not met within {self.timeout:g} s "
                               f"(last: {self.value!r})")
        return False


def wait_until(check: Callable[[], Any], timeout: float = 30, interval: float = 0.05,
               what: Any = "condition") -> Any:
    """``check()``'s first truthy value; TimeoutError naming ``what`` (a str, or a callable
    giving one: it may describe the state at the time of failure) once ``timeout`` seconds
    pass. ``check`` may raise to fail at once (say, when the process it waits on has exited)."""
    poll = _Poll(check, timeout, what, time.monotonic)
    while not poll.holds():
        time.sleep(interval)
    return poll.value


async def until(check: Callable[[], Any], timeout: float = 3.0, interval: float = 0.005,
                what: Any = "condition") -> Any:
    """``wait_until`` for a coroutine: lets the running loop work between checks. The deadline
    is on the loop's clock, so on a VirtualTimeLoop (tests/support/virtual_time.py) ``timeout``
    and ``interval`` are virtual seconds, and the waiting takes no real time."""
    poll = _Poll(check, timeout, what, asyncio.get_running_loop().time)
    while not poll.holds():
        await asyncio.sleep(interval)
    return poll.value
