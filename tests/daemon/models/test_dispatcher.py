"""The Dispatcher (daemon/models/dispatcher.py) on virtual time, over an in-memory channel.

The channel records each batch and lets the test answer it, lose it, or leave it hanging, so
every way a batch can end is exact: answered, the response timeout (504, channel poisoned), a
stop's deadline (503), the worker's death (its jobs fail with the runner's error), and a batch
that could not even be sent (its jobs go back to the front of the queue). Sending the next batch
ahead and a dead worker's batch running again: test_dispatcher_ahead.py."""
from __future__ import annotations

import asyncio


from daemon.models.job import Answer
from tests.daemon.models.dispatch_helpers import (MemoryChannel, dispatcher, failed, model,
                                                  settle, submit)
from tests.support.virtual_time import run_on_virtual_time as run
from tests.support.waiting import until


def test_batches_form_by_size_and_delay_and_are_answered_in_order():
    async def main():
        mv, channel = model(batch_size=2, delay_ms=50), MemoryChannel()
        feeder = dispatcher(mv, channel)
        serving = asyncio.ensure_future(feeder.serve())
        a, b, c = submit(mv, "a"), submit(mv, "b"), submit(mv, "c")
        await settle()
        assert [r["id"] for r in channel.batches[0][0]] == ["a", "b"] and feeder.batch
        channel.answer()
        assert await a.next_event() == Answer({"id": "a", "body": b"ok"})
        assert isinstance(await b.next_event(), Answer)
        start = asyncio.get_running_loop().time()
        # "c" waits out its 50 ms for a partner
        await until(lambda: len(channel.batches) == 2, interval=0.001)
        assert asyncio.get_running_loop().time() - start <= 0.051
        channel.answer()
        assert isinstance(await c.next_event(), Answer)
        await settle()                        # the dispatcher's task resumes after the answer
        assert feeder.served == 3 and feeder.batch is None and feeder.idle_since is not None
        feeder.stop(asyncio.get_running_loop().time())
        assert await serving is None
    run(main())


def test_a_batch_past_its_response_timeout_fails_504_and_poisons_the_channel():
    async def main():
        mv, channel = model(timeout=7), MemoryChannel()
        serving = asyncio.ensure_future(dispatcher(mv, channel).serve())
        job = submit(mv, "slow")
        started = asyncio.get_running_loop().time()
        assert await serving == "response timeout after 7 s"
        assert asyncio.get_running_loop().time() - started == 7
        error = failed(await job.next_event())
        assert error.status == 504 and "response_timeout" in error.message
        assert channel.closed          # a late answer can never reach the next batch
    run(main())


def test_a_stop_cuts_the_batch_at_its_deadline_with_503():
    async def main():
        mv, channel = model(timeout=100), MemoryChannel()
        feeder = dispatcher(mv, channel)
        serving = asyncio.ensure_future(feeder.serve())
        job = submit(mv, "long")
        await settle()
        stopped_at = asyncio.get_running_loop().time()
        feeder.stop(stopped_at + 2)
        assert await serving == "stop timeout"
        assert asyncio.get_running_loop().time() - stopped_at == 2
        error = failed(await job.next_event())
        assert error.status == 503
    run(main())


def test_a_stop_lets_the_batch_in_flight_finish_first():
    async def main():
        mv, channel = model(), MemoryChannel()
        feeder = dispatcher(mv, channel)
        serving = asyncio.ensure_future(feeder.serve())
        job, queued = submit(mv, "busy"), submit(mv, "queued")
        await settle()
        feeder.stop(asyncio.get_running_loop().time() + 5)
        channel.answer()
        assert await serving is None
        assert isinstance(await job.next_event(), Answer)
        assert mv.queue.depth == 1 and not queued.finished   # left for another worker
    run(main())


def test_a_lost_channel_fails_the_batch_with_the_death_error_only():
    async def main():
        mv, channel = model(redispatch=False), MemoryChannel()
        serving = asyncio.ensure_future(dispatcher(mv, channel).serve())
        job, queued = submit(mv, "in-flight"), submit(mv, "queued")
        await settle()
        channel.lose()
        assert await serving == "worker closed its socket"
        error = failed(await job.next_event())
        assert error.status == 500 and error.message == "Worker died."
        assert mv.queue.depth == 1 and not queued.finished
    run(main())


def test_a_batch_that_cannot_be_sent_goes_back_to_the_front_of_the_queue():
    async def main():
        mv, channel = model(batch_size=2), MemoryChannel(refuse=True)
        first, second = submit(mv, "a"), submit(mv, "b")
        submit(mv, "c")
        assert await dispatcher(mv, channel).serve() == "worker closed its socket"
        assert [j.id for j in mv.queue.take_ready(3, 0)] == ["a", "b", "c"]
        assert not first.finished and not second.finished
    run(main())


def test_a_client_behind_may_pause_the_worker_only_when_its_request_is_the_whole_batch():
    """Pausing a worker for one client that is not reading stalls the rest of its batch: a
    request that shares its batch keeps its parts instead (and is cut off past its limit)."""
    async def main():
        mv, channel = model(batch_size=2), MemoryChannel()
        feeder = dispatcher(mv, channel)
        serving = asyncio.ensure_future(feeder.serve())
        alone = submit(mv, "alone")
        await settle()
        assert alone.source is feeder and alone.hold() and channel.holders == {"alone"}
        alone.release()
        channel.answer()
        a, b = submit(mv, "a"), submit(mv, "b")
        await settle()
        assert [r["id"] for r in channel.batches[-1][0]] == ["a", "b"]
        assert not a.hold() and channel.holders == set()
        mv.queue.abandon(b)                  # b's client hangs up: a is all that waits now
        assert a.hold() and channel.holders == {"a"}
        channel.answer()
        assert isinstance(await a.next_event(), Answer) and channel.holders == set()
        feeder.stop(asyncio.get_running_loop().time())
        assert await serving is None
    run(main())
