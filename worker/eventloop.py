"""The worker's one asyncio event loop, made on first use and kept for the process's life.

An ``async def`` handler (or one that returns any awaitable) is awaited on it in batch and
continuous mode, and async mode runs on it: whatever the handler bound to the loop at load time
(a client session, a lock, a background task) stays usable in every batch. Made lazily, in the
worker itself: the zygote never runs a handler, and a loop must not cross a fork.
"""
from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable
from typing import Any

_loop: asyncio.AbstractEventLoop | None = None


def worker_loop() -> asyncio.AbstractEventLoop:
    global _loop
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
        asyncio.set_event_loop(_loop)
    return _loop


def settle(value: Any) -> Any:
    """``value``, awaited to its result on the worker's loop if it is awaitable.

    Called from synchronous code only (never from a coroutine on that loop, which async mode
    awaits itself)."""
    if not inspect.isawaitable(value):
        return value
    return worker_loop().run_until_complete(_awaited(value))


async def _awaited(value: Awaitable[Any]) -> Any:
    # run_until_complete takes coroutines and futures; any other awaitable goes through this.
    return await value
