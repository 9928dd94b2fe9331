"""The Dispatcher sends the next batch while one runs (one batch ahead), and runs a dead
worker's batch once more; on virtual time, over the in-memory channel of dispatch_helpers."""
from __future__ import annotations

import asyncio
import gc

import pytest

from daemon.errors import InternalServerError, ServiceUnavailable
from daemon.models.dispatcher import Dispatcher
from daemon.models.job import Answer, Part
from tests.daemon.models.dispatch_helpers import (MemoryChannel, Observer, dispatcher, failed,
                                                  model, observed, sent_ids, settle, submit)
from tests.support.virtual_time import run_on_virtual_time as run
from tests.support.waiting import until


# ---- one batch ahead -------------------------------------------------------------------------

def test_at_saturation_the_next_batch_leaves_inside_the_result_read():
    async def main():
        mv, channel = model(batch_size=2), MemoryChannel()
        feeder, observer = observed(mv, channel)
        serving = asyncio.ensure_future(feeder.serve())
        jobs = [submit(mv, name) for name in "abcde"]
        await settle()
        assert sent_ids(channel) == [["a", "b"]]
        channel.answer()      # no await between the read and the next send: no task ran
        assert sent_ids(channel) == [["a", "b"], ["c", "d"]] and feeder.batch == jobs[2:4]
        assert observer.gaps == [0.0]   # virtual time: no time passed in the read
        channel.answer()
        assert sent_ids(channel)[-1] == ["e"]   # its delay (0 ms) is over: ready, sent too
        channel.answer()
        for job in jobs:
            assert isinstance(await job.next_event(), Answer)
        await settle()
        assert feeder.served == 5 and feeder.batch is None and mv.queue.depth == 0
        feeder.stop(asyncio.get_running_loop().time())
        assert await serving is None
    run(main())


def test_a_batch_still_filling_is_not_sent_ahead():
    async def main():
        mv, channel = model(batch_size=4, delay_ms=100), MemoryChannel()
        feeder, observer = observed(mv, channel)
        serving = asyncio.ensure_future(feeder.serve())
        submit(mv, "a")
        await until(lambda: channel.batches, interval=0.01)   # "a" goes alone after 100 ms
        submit(mv, "b")                       # arrives while "a" runs; may still get company
        channel.answer()
        assert sent_ids(channel) == [["a"]] and observer.gaps == []
        started = asyncio.get_running_loop().time()
        await until(lambda: len(channel.batches) == 2, interval=0.001)
        assert asyncio.get_running_loop().time() - started == pytest.approx(0.1, abs=0.002)
        feeder.stop(asyncio.get_running_loop().time() + 5)
        channel.answer()
        assert await serving is None
    run(main())


async def one_running_one_waiting() -> tuple:
    """A dispatcher whose worker runs one job while another waits in the queue."""
    mv, channel = model(), MemoryChannel()
    feeder, _ = observed(mv, channel)
    serving = asyncio.ensure_future(feeder.serve())
    running, waiting = submit(mv, "running"), submit(mv, "waiting")
    await settle()
    return mv, channel, feeder, serving, running, waiting


def test_a_stop_sends_nothing_ahead_and_leaves_the_queue_to_others():
    async def main():
        mv, channel, feeder, serving, running, waiting = await one_running_one_waiting()
        feeder.stop(asyncio.get_running_loop().time() + 5)   # scaled down while busy
        channel.answer()
        assert await serving is None and len(channel.batches) == 1
        assert isinstance(await running.next_event(), Answer)
        assert not waiting.finished and mv.queue.depth == 1
    run(main())


def test_an_unregistered_model_sends_nothing_ahead():
    async def main():
        mv, channel, feeder, serving, running, waiting = await one_running_one_waiting()
        mv.queue.close(ServiceUnavailable("unregistered"))    # what unregister does first
        feeder.stop(asyncio.get_running_loop().time() + 5)    # then its drain
        channel.answer()
        assert await serving is None and len(channel.batches) == 1
        assert isinstance(await running.next_event(), Answer)
        error = failed(await waiting.next_event())
        assert error.status == 503
    run(main())


def test_a_death_fails_only_the_batch_that_was_running():
    async def main():
        mv, channel = model(redispatch=False), MemoryChannel()
        feeder, _ = observed(mv, channel)
        serving = asyncio.ensure_future(feeder.serve())
        first, second, third = submit(mv, "first"), submit(mv, "second"), submit(mv, "third")
        await settle()
        channel.answer()               # "second" leaves at once and runs
        channel.lose()                 # the worker dies in it
        assert await serving == "worker closed its socket"
        assert isinstance(await first.next_event(), Answer)
        error = failed(await second.next_event())
        assert error.message == "Worker died."
        assert not third.finished and mv.queue.depth == 1   # never sent: still queued
    run(main())


def test_a_batch_sent_ahead_has_its_whole_response_timeout_from_its_start():
    async def main():
        mv, channel = model(timeout=10), MemoryChannel()
        feeder, _ = observed(mv, channel)
        serving = asyncio.ensure_future(feeder.serve())
        first, second = submit(mv, "first"), submit(mv, "second")
        await settle()
        await asyncio.sleep(8)         # "second" has waited 8 s in the queue
        channel.answer()               # ... and starts now
        started = asyncio.get_running_loop().time()
        assert await serving == "response timeout after 10 s"
        assert asyncio.get_running_loop().time() - started == 10
        assert isinstance(await first.next_event(), Answer)
        error = failed(await second.next_event())
        assert error.status == 504 and channel.closed
        assert len(channel.batches) == 2   # nothing went after the batch that timed out
    run(main())


def test_a_batch_that_fails_to_send_for_another_reason_is_answered_not_lost():
    async def main():
        mv, channel = model(batch_size=2), MemoryChannel(fault=ValueError("unencodable"))
        first, second = submit(mv, "a"), submit(mv, "b")
        reason = await dispatcher(mv, channel).serve()
        assert reason == "could not send a batch: ValueError: unencodable"
        for job in (first, second):
            error = failed(await job.next_event())
            assert error.status == 500 and "unencodable" in error.message
    run(main())


# ---- a dead worker's batch runs once more ----------------------------------------------------

class Counting(Observer):
    def __init__(self) -> None:
        super().__init__()
        self.again = 0

    def redispatched(self, model: str, version: str, count: int) -> None:
        self.again += count


def test_a_dead_workers_batch_goes_back_first_in_line_once():
    async def main():
        mv, channel = model(batch_size=2), MemoryChannel()
        observer = Counting()
        feeder = Dispatcher(mv, channel, asyncio.get_running_loop().time,
                            death_error=lambda: InternalServerError("Worker died."),
                            observer=observer)
        serving = asyncio.ensure_future(feeder.serve())
        first, second, third = submit(mv, "a"), submit(mv, "b"), submit(mv, "c")
        await settle()
        channel.lose()
        assert await serving == "worker closed its socket"
        assert not first.finished and not second.finished and observer.again == 2
        assert [j.id for j in mv.queue.take_ready(3, 0)] == ["a", "b", "c"]   # first in line
        assert first.redispatched and second.redispatched and not third.redispatched

        mv.queue.requeue_front([first, second, third])
        replacement = MemoryChannel()
        serving = asyncio.ensure_future(dispatcher(mv, replacement).serve())
        await settle()
        replacement.lose()                  # a second death: no third try
        await serving
        for job in (first, second):
            error = failed(await job.next_event())
            assert error.message == "Worker died."
        assert not third.finished and mv.queue.depth == 1
    run(main())


def test_a_request_that_streamed_or_a_model_that_opted_out_is_not_sent_again():
    async def main():
        for streams, redispatch in ((True, True), (False, False)):
            mv, channel = model(redispatch=redispatch), MemoryChannel()
            serving = asyncio.ensure_future(dispatcher(mv, channel).serve())
            job = submit(mv, "a")
            await settle()
            if streams:
                job.send_part({"id": "a", "body": b"part"})
                assert await job.next_event() == Part({"id": "a", "body": b"part"})
            channel.lose()
            await serving
            error = failed(await job.next_event())
            assert error.status == 500 and mv.queue.depth == 0
    run(main())


def test_a_timed_out_batch_is_not_a_death_and_never_runs_again():
    async def main():
        mv, channel = model(timeout=3), MemoryChannel()
        serving = asyncio.ensure_future(dispatcher(mv, channel).serve())
        job = submit(mv, "slow")
        assert await serving == "response timeout after 3 s"
        error = failed(await job.next_event())
        assert error.status == 504
        assert mv.queue.depth == 0 and not job.redispatched
    run(main())



def test_answered_batches_leave_no_reference_cycles():
    """The deadline timer of each batch was a closure that re-armed itself by name: a
    reference cycle per batch for the cyclic collector."""
    async def main():
        mv, channel = model(), MemoryChannel()
        feeder = dispatcher(mv, channel)
        serving = asyncio.ensure_future(feeder.serve())
        gc.collect()
        gc.disable()
        try:
            for index in range(20):
                job = submit(mv, f"j{index}")
                await settle()
                channel.answer()
                assert isinstance(await job.next_event(), Answer)
                await settle()
            channel.batches.clear()
            assert gc.collect() == 0
        finally:
            gc.enable()
        feeder.stop(asyncio.get_running_loop().time())
        assert await serving is None
    run(main())


def test_at_saturation_each_batch_is_done_with_in_its_read_without_the_task():
    async def main():
        mv, channel = model(), MemoryChannel()
        feeder = dispatcher(mv, channel)
        serving = asyncio.ensure_future(feeder.serve())
        jobs = [submit(mv, f"j{index}") for index in range(5)]
        await settle()
        for _ in jobs:   # no await between the answers: the task never runs
            channel.answer()
        assert feeder.served == 5 and feeder.answered == 5
        assert feeder.batch is None and feeder.idle_since is not None
        assert all(job.finished for job in jobs) and len(channel.batches) == 5
        feeder.stop(asyncio.get_running_loop().time())
        assert await serving is None
    run(main())


def test_the_deadline_follows_the_batch_running_after_many_answered_ones():
    """One timer serves every batch: set for an answered batch, it re-arms for the next."""
    async def main():
        loop = asyncio.get_running_loop()
        mv, channel = model(timeout=7), MemoryChannel()
        serving = asyncio.ensure_future(dispatcher(mv, channel).serve())
        for index in range(12):   # 12 batches of 1 s each: past one response_timeout
            submit(mv, f"quick{index}")
            await settle()
            await asyncio.sleep(1)
            channel.answer()
        slow = submit(mv, "slow")
        await settle()
        started = loop.time()
        assert await serving == "response timeout after 7 s"
        assert loop.time() - started == pytest.approx(7)
        error = failed(await slow.next_event())
        assert error.status == 504 and channel.closed
    run(main())
