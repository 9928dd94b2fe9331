"""Polling with a deadline, for tests that wait on a real process or server."""
from __future__ import annotations

import time
from typing import Any, Callable


def wait_until(check: Callable[[], Any], timeout: float = 30, interval: float = 0.05,
               what: Any = "condition") -> Any:
    """``check()``'s first truthy value; TimeoutError naming ``what`` (a str or a callable
    giving one) once ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            reason = what() if callable(what) else what
            raise TimeoutError(f"{reason} not met within {timeout} s (last: {value!r})")
        time.sleep(interval)
