"""The Dispatcher (daemon/models/dispatcher.py) on virtual time, over an in-memory channel.

The channel records each batch and lets the test answer it, lose it, or leave it hanging, so
every way a batch can end is exact: answered, the response timeout (504, channel poisoned), a
stop's deadline (503), the worker's death (its jobs fail with the runner's error), and a batch
that could not even be sent (its jobs go back to the front of the queue)."""
from __future__ import annotations

import asyncio
import gc
from types import SimpleNamespace
from typing import Any

import pytest

from daemon.errors import InternalServerError, ServiceUnavailable
from daemon.models.dispatcher import Dispatcher
from daemon.models.job import Answer, Failure, Part, Job
from daemon.models.queue import JobQueue
from daemon.models.registry import ModelSettings
from tests.support.virtual_time import run_on_virtual_time as run
from tests.support.waiting import until


class MemoryChannel:
    def __init__(self, refuse: bool = False, fault: Exception | None = None) -> None:
        self.lost = asyncio.get_running_loop().create_future()
        self.refuse = refuse
        self.fault = fault   # raised by start_batch: a bug on the daemon's side
        self.batches: list[tuple[list[dict], Any, asyncio.Future]] = []
        self.closed = False
        self.holders: set[str] = set()   # jobs holding the channel (flow control)

    def start_batch(self, batch_id, requests, on_part, on_result) -> asyncio.Future:
        if self.refuse:
            raise ConnectionResetError("worker closed its socket")
        if self.fault is not None:
            raise self.fault
        result = asyncio.get_running_loop().create_future()
        self.batches.append((requests, on_result, result))
        return result

    def answer(self) -> None:
        requests, on_result, result = self.batches[-1]
        message = {"responses": [{"id": r["id"], "body": b"ok"} for r in requests]}
        on_result(message)
        result.set_result(message)

    def lose(self) -> None:
        self.lost.set_result(ConnectionResetError("worker closed its socket"))
        for _, _, result in self.batches:
            if not result.done():
                result.set_exception(self.lost.result())

    def end_batch(self, batch_id: int | None = None) -> None:
        self.holders.clear()

    def close(self) -> None:
        self.closed = True

    def hold(self, job_id: str) -> None:
        self.holders.add(job_id)

    def release(self, job_id: str) -> None:
        self.holders.discard(job_id)


def model(batch_size: int = 1, delay_ms: int = 0, timeout: int = 10,
          redispatch: bool = True, **more: Any) -> SimpleNamespace:
    loop = asyncio.get_running_loop()
    settings = ModelSettings(batch_size=batch_size, max_batch_delay=delay_ms,
                             response_timeout=timeout, redispatch=redispatch, **more)
    return SimpleNamespace(name="m", version="1.0", settings=settings,
                           queue=JobQueue(10, clock=loop.time))


def failed(event):
    """The error a Failure event carries (anything else fails the test)."""
    assert isinstance(event, Failure), event
    return event.error


def submit(mv: SimpleNamespace, name: str) -> Job:
    job = Job(id=name, request={"id": name}, arrival=asyncio.get_running_loop().time())
    mv.queue.submit(job)
    return job


def dispatcher(mv: SimpleNamespace, channel: MemoryChannel) -> Dispatcher:
    return Dispatcher(mv, channel, asyncio.get_running_loop().time,
                      death_error=lambda: InternalServerError("Worker died."))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


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


# ---- one batch ahead -------------------------------------------------------------------------

class Observer:
    def __init__(self) -> None:
        self.batches: list[int] = []
        self.gaps: list[float] = []

    def observe_batch(self, model: str, version: str, size: int) -> None:
        self.batches.append(size)

    def observe_idle_gap(self, model: str, version: str, seconds: float) -> None:
        self.gaps.append(seconds)


def observed(mv: SimpleNamespace, channel: MemoryChannel) -> tuple[Dispatcher, Observer]:
    observer = Observer()
    return Dispatcher(mv, channel, asyncio.get_running_loop().time,
                      death_error=lambda: InternalServerError("Worker died."),
                      observer=observer), observer


def sent_ids(channel: MemoryChannel) -> list[list[str]]:
    return [[r["id"] for r in requests] for requests, _, _ in channel.batches]


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
