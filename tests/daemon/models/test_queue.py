"""JobQueue and batching (daemon/models/queue.py), without processes.

The event loop runs on virtual time and the queue's clock is the loop's: batch delays are
asserted exactly, however loaded the machine is.
"""
from __future__ import annotations

import asyncio

import pytest

from daemon.errors import RequestTimeout, ServiceUnavailable
from daemon.models.job import GONE, Answer, Failure, Job, Part
from daemon.models.queue import JobQueue, QueueFull, queue_full_error
from tests.support.virtual_time import run_on_virtual_time as run


def now() -> float:
    return asyncio.get_running_loop().time()


def make_queue(capacity: int) -> JobQueue:
    """A queue on the loop's (virtual) clock."""
    return JobQueue(capacity, clock=asyncio.get_running_loop().time)


def job(name: str, age: float = 0.0) -> Job:
    """A job that arrived ``age`` seconds ago."""
    return Job(id=name, request={"id": name}, arrival=now() - age)


def ids(jobs: list[Job]) -> list[str]:
    return [j.id for j in jobs]


def test_capacity_counts_waiting_jobs_only():
    async def main():
        queue = make_queue(2)
        queue.submit(job("a"))
        queue.submit(job("b"))
        assert queue.depth == 2 and queue.remaining_capacity == 0
        with pytest.raises(QueueFull):
            queue.submit(job("c"))
        assert ids(await queue.take_batch(1, 0)) == ["a"]    # "a" is in a worker now
        queue.submit(job("c"))
        assert queue.depth == 2
    run(main())


def test_full_queue_makes_room_by_dropping_abandoned_jobs():
    async def main():
        queue = make_queue(2)
        a, b = job("a"), job("b")
        queue.submit(a)
        queue.submit(b)
        a.cancelled = True          # marked, not yet removed
        queue.submit(job("c"))
        assert ids(await queue.take_batch(5, 0)) == ["b", "c"]
    run(main())


def test_a_full_batch_goes_at_once():
    async def main():
        queue = make_queue(10)
        for name in "abcde":
            queue.submit(job(name))
        started = now()
        batch = await queue.take_batch(4, 10.0)
        assert ids(batch) == ["a", "b", "c", "d"] and now() == started
        assert queue.depth == 1
    run(main())


def test_late_jobs_join_until_the_delay_from_the_first_arrival():
    async def main():
        queue = make_queue(10)
        take = asyncio.ensure_future(queue.take_batch(4, 0.3))
        queue.submit(job("a"))
        await asyncio.sleep(0.1)
        queue.submit(job("b"))
        started = now()
        batch = await take
        assert ids(batch) == ["a", "b"]
        assert now() - started == pytest.approx(0.2)   # 0.3 s after "a" arrived, not after "b"
        queue.submit(job("c"))
        assert ids(await queue.take_batch(4, 0)) == ["c"]
    run(main())


def test_jobs_of_a_filling_batch_count_as_gathering_until_it_is_taken():
    async def main():
        queue = make_queue(10)
        take = asyncio.ensure_future(queue.take_batch(3, 0.5))
        a = job("a")
        queue.submit(a)
        queue.submit(job("b"))
        await asyncio.sleep(0.1)
        assert (queue.depth, queue.gathering) == (0, 2)   # in-flight, not waiting
        queue.abandon(a)
        assert queue.gathering == 1
        assert ids(await take) == ["b"]
        assert queue.gathering == 0
    run(main())


def test_the_delay_is_counted_from_arrival_not_from_dispatch():
    async def main():
        queue = make_queue(10)
        queue.submit(job("old", age=1.0))     # waited behind a busy worker already
        started = now()
        assert ids(await queue.take_batch(4, 0.5)) == ["old"]
        assert now() == started
    run(main())


def test_abandoned_job_leaves_the_queue_at_once():
    async def main():
        queue = make_queue(10)
        a, b = job("a"), job("b")
        queue.submit(a)
        queue.submit(b)
        queue.abandon(a)
        assert queue.depth == 1 and a.cancelled
        assert await a.next_event() is GONE
        assert ids(await queue.take_batch(4, 0)) == ["b"]
    run(main())


def test_abandoned_while_its_batch_fills_is_not_dispatched():
    async def main():
        queue = make_queue(10)
        a = job("a")
        take = asyncio.ensure_future(queue.take_batch(2, 0.2))
        queue.submit(a)
        await asyncio.sleep(0.05)
        queue.abandon(a)             # popped into the batch, still collecting
        await asyncio.sleep(0.3)     # the batch delay has passed with nothing else
        assert not take.done()       # an empty batch is not handed to a worker
        queue.submit(job("b"))
        assert ids(await take) == ["b"]
    run(main())


def test_a_cancelled_collector_gives_its_jobs_back_in_order():
    async def main():
        queue = make_queue(10)
        take = asyncio.ensure_future(queue.take_batch(3, 5.0))
        queue.submit(job("a"))
        queue.submit(job("b"))
        await asyncio.sleep(0.05)
        assert queue.depth == 0      # both popped into the filling batch
        take.cancel()                # its worker went away
        with pytest.raises(asyncio.CancelledError):
            await take
        assert (queue.depth, queue.gathering) == (2, 0)
        queue.submit(job("c"))
        assert ids(await queue.take_batch(3, 0)) == ["a", "b", "c"]
    run(main())


def test_one_collector_at_a_time_keeps_batches_whole():
    async def main():
        queue = make_queue(10)
        first = asyncio.ensure_future(queue.take_batch(2, 1.0))
        second = asyncio.ensure_future(queue.take_batch(2, 1.0))
        for name in "abcd":
            queue.submit(job(name))
            await asyncio.sleep(0.01)
        assert ids(await first) == ["a", "b"]
        assert ids(await second) == ["c", "d"]
    run(main())


def test_a_timed_out_job_is_answered_and_never_dispatched():
    """clientTimeoutInMills (daemon/models/call.py): whether it waits in the queue or in a
    batch still filling, it is answered now and no worker gets it; the queue has room again."""
    async def main():
        queue = make_queue(2)
        a, b = job("a"), job("b")
        queue.submit(a)
        queue.submit(b)
        expired = RequestTimeout("too late")
        queue.time_out(b, expired)
        assert queue.depth == 1 and queue.remaining_capacity == 1
        assert await b.next_event() == Failure(expired)
        take = asyncio.ensure_future(queue.take_batch(2, 0.2))
        await asyncio.sleep(0.05)    # "a" is in the batch that fills
        assert queue.gathering == 1
        queue.time_out(a, expired)
        assert queue.gathering == 0
        queue.submit(job("c"))
        assert ids(await take) == ["c"]
    run(main())


def test_requeue_front_skips_finished_and_abandoned_jobs():
    async def main():
        queue = make_queue(10)
        queue.submit(job("z"))
        a, b, c = job("a"), job("b"), job("c")
        b.finish({"id": "b"})
        c.cancelled = True
        queue.requeue_front([a, b, c])
        assert ids(await queue.take_batch(5, 0)) == ["a", "z"]
    run(main())


def test_fail_all_answers_every_waiting_job():
    async def main():
        queue = make_queue(10)
        jobs = [job(name) for name in "abc"]
        for j in jobs:
            queue.submit(j)
        error = ServiceUnavailable("gone")
        assert queue.fail_all(error) == 3 and queue.depth == 0
        for j in jobs:
            assert await j.next_event() == Failure(error)
    run(main())


def test_a_closed_queue_answers_late_jobs_too():
    async def main():
        queue = make_queue(10)
        take = asyncio.ensure_future(queue.take_batch(3, 5.0))
        filling, waiting = job("filling"), job("waiting")
        queue.submit(filling)
        await asyncio.sleep(0.05)     # popped into the batch, which waits for more
        queue.submit(waiting)
        await asyncio.sleep(0.05)
        error = ServiceUnavailable("unregistered")
        queue.close(error)
        take.cancel()                 # its worker is stopped: the batch comes back ...
        with pytest.raises(asyncio.CancelledError):
            await take
        for j in (filling, waiting):  # ... and is answered, not left in a dead queue
            assert await j.next_event() == Failure(error)
        with pytest.raises(ServiceUnavailable):
            queue.submit(job("late"))
        assert queue.depth == 0
    run(main())


def test_job_events_end_with_exactly_one_answer():
    async def main():
        j = job("a")
        j.send_part({"body": b"1"})
        j.finish({"body": b"2"})
        j.fail(ServiceUnavailable("late"))
        j.send_part({"body": b"3"})
        assert await j.next_event() == Part({"body": b"1"})
        assert await j.next_event() == Answer({"body": b"2"})
        after = asyncio.ensure_future(j.next_event())
        await asyncio.sleep(0)
        assert not after.done()  # nothing follows the answer
        after.cancel()
    run(main())


def test_job_events_wake_a_waiting_reader_in_order():
    async def main():
        j = job("a")
        reader = asyncio.ensure_future(j.next_event())
        await asyncio.sleep(0)
        assert not reader.done()
        j.send_part({"body": b"1"})
        j.finish({"body": b"2"})
        assert await reader == Part({"body": b"1"})
        assert await j.next_event() == Answer({"body": b"2"})
    run(main())


def test_next_arrival_is_done_when_a_job_is_queued_or_given_back():
    async def main():
        q = make_queue(10)
        first, second = q.next_arrival(), q.next_arrival()
        assert not first.done()
        q.submit(job("a"))
        assert first.done() and second.done()
        [taken] = q.take_ready(1, 0.0)
        again = q.next_arrival()
        assert not again.done()
        q.requeue_front([taken])
        assert again.done() and q.depth == 1
    run(main())


def test_queue_full_error():
    error = queue_full_error("m")
    assert error.status == 503 and error.headers == {"Retry-After": "1"}
    assert error.to_json() == {"code": 503, "type": "ServiceUnavailableException",
                               "message": 'Model "m" job queue is full'}


def test_a_listener_gets_the_queued_events_then_each_as_it_happens():
    async def main():
        j = job("a")
        j.send_part({"body": b"1"})
        heard: list = []
        j.listen(heard.append)
        assert heard == [Part({"body": b"1"})]   # what waited is handed over first
        j.finish({"body": b"2"})
        assert heard[-1] == Answer({"body": b"2"})   # at once: no task in between
        j.fail(ServiceUnavailable("late"))
        assert len(heard) == 2   # nothing follows the answer
    run(main())
