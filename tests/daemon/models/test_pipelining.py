"""Async workers' dispatcher (daemon/models/pipelining.py): batches go without waiting for
earlier answers, up to maxBatchesInFlight; answers come in any order; one batch past its
response_timeout replaces the worker. Virtual time, an in-memory channel."""
from __future__ import annotations

import asyncio

from daemon.errors import InternalServerError
from daemon.models.job import Answer, Job
from daemon.models.pipelining import PipelineDispatcher
from tests.daemon.models.dispatch_helpers import MemoryChannel, model, settle
from tests.support.virtual_time import run_on_virtual_time as run


def submit(mv, name: str) -> Job:
    job = Job(id=name, request={"id": name}, arrival=asyncio.get_running_loop().time())
    mv.queue.submit(job)
    return job


def pipeline(mv, channel: MemoryChannel) -> PipelineDispatcher:
    return PipelineDispatcher(mv, channel, asyncio.get_running_loop().time,
                              death_error=lambda: InternalServerError("Worker died."))


def answer(channel: MemoryChannel, index: int) -> None:
    requests, on_result, result = channel.batches[index]
    message = {"responses": [{"id": r["id"], "body": b"ok"} for r in requests]}
    on_result(message)
    result.set_result(message)


def sent(channel: MemoryChannel) -> list[list[str]]:
    return [[r["id"] for r in requests] for requests, _, _ in channel.batches]


def test_batches_go_without_waiting_and_answers_come_in_any_order():
    async def main():
        mv, channel = model(max_batches_in_flight=8), MemoryChannel()
        feeder = pipeline(mv, channel)
        serving = asyncio.ensure_future(feeder.serve())
        jobs = [submit(mv, f"r{i}") for i in range(3)]
        await settle()
        assert sent(channel) == [["r0"], ["r1"], ["r2"]] and len(feeder.batch or []) == 3
        answer(channel, 2)
        answer(channel, 0)
        assert await jobs[2].next_event() == Answer({"id": "r2", "body": b"ok"})
        assert isinstance(await jobs[0].next_event(), Answer) and not jobs[1].finished
        answer(channel, 1)
        assert isinstance(await jobs[1].next_event(), Answer)
        await settle()
        assert feeder.batch is None and feeder.served == 3 and feeder.answered == 3
        feeder.stop(asyncio.get_running_loop().time())
        assert await serving is None
    run(main())


def test_no_more_than_max_batches_in_flight():
    async def main():
        mv, channel = model(max_batches_in_flight=2), MemoryChannel()
        serving = asyncio.ensure_future(pipeline(mv, channel).serve())
        for i in range(3):
            submit(mv, f"r{i}")
        await settle()
        assert sent(channel) == [["r0"], ["r1"]] and mv.queue.depth == 1
        answer(channel, 1)
        await settle()
        assert sent(channel)[-1] == ["r2"] and mv.queue.depth == 0
        serving.cancel()
    run(main())


def test_a_batch_past_its_timeout_replaces_the_worker():
    async def main():
        mv, channel = model(timeout=5, max_batches_in_flight=4), MemoryChannel()
        serving = asyncio.ensure_future(pipeline(mv, channel).serve())
        slow = submit(mv, "slow")
        await settle()
        await asyncio.sleep(3)
        other = submit(mv, "other")    # sent 3 s later: its own deadline is later
        await settle()
        closed = asyncio.ensure_future(serving)
        await asyncio.sleep(2.5)
        assert channel.closed
        channel.lose()                 # the poisoned connection's end
        assert await closed == "response timeout after 5 s"
        error = (await slow.next_event()).error
        assert error.status == 504
        assert not other.finished and mv.queue.depth == 1   # sent again on the next worker
    run(main())


def test_a_client_behind_never_pauses_an_async_worker():
    """Batches go to an async worker as they come: pausing it for one client that is not
    reading would stall every batch in flight and every one after."""
    async def main():
        mv, channel = model(max_batches_in_flight=8), MemoryChannel()
        feeder = pipeline(mv, channel)
        serving = asyncio.ensure_future(feeder.serve())
        job = submit(mv, "r0")
        await settle()
        assert job.source is feeder and not job.hold() and channel.holders == set()
        answer(channel, 0)
        feeder.stop(asyncio.get_running_loop().time())
        assert await serving is None
    run(main())
