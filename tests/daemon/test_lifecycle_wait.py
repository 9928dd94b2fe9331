"""first_of: the once-per-batch wait for a worker's result, a stop request or the deadline."""
from __future__ import annotations

import asyncio
import time

import pytest

from daemon.lifecycle import first_of

pytestmark = pytest.mark.timeout(10)


def test_returns_when_the_result_comes():
    async def main():
        loop = asyncio.get_running_loop()
        result, stop = loop.create_future(), loop.create_future()
        loop.call_later(0.01, result.set_result, "r")
        started = time.monotonic()
        await first_of(5, result, stop)
        assert result.done() and time.monotonic() - started < 1
    asyncio.run(main())


def test_returns_when_the_other_is_done_first():
    async def main():
        loop = asyncio.get_running_loop()
        result, stop = loop.create_future(), loop.create_future()
        loop.call_later(0.01, stop.set_result, None)
        await first_of(5, result, stop)
        assert not result.done() and stop.done()
    asyncio.run(main())


def test_returns_after_the_timeout_with_nothing_done():
    async def main():
        loop = asyncio.get_running_loop()
        result = loop.create_future()
        started = time.monotonic()
        await first_of(0.05, result)
        assert not result.done() and 0.04 < time.monotonic() - started < 1
    asyncio.run(main())
