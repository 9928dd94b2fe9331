"""Sequence affinity (daemon/models/sequences.py and its use by the queue and the dispatcher):
a sequence's jobs all go to the dispatcher that took its first, one at a time, in order; a
sequence job is not held up by a batch that is filling; a worker that dies gives its sequences
to the next; an ended sequence fails what still waits in it. Virtual time, in-memory channels.
"""
from __future__ import annotations

import asyncio

from daemon.errors import ServiceUnavailable
from daemon.models.job import Failure, Job
from tests.daemon.models.test_dispatcher import MemoryChannel, dispatcher, model, settle
from tests.support.virtual_time import run_on_virtual_time as run


def failed(event):
    """The error a Failure event carries (anything else fails the test)."""
    assert isinstance(event, Failure), event
    return event.error


def submit(mv, name: str, sequence: str | None = None) -> Job:
    job = Job(id=name, request={"id": name}, arrival=asyncio.get_running_loop().time())
    job.sequence = sequence
    mv.queue.submit(job)
    return job


def sent(channel: MemoryChannel) -> list[list[str]]:
    return [[r["id"] for r in requests] for requests, _, _ in channel.batches]


async def answer_all(channels: list[MemoryChannel], rounds: int = 10) -> None:
    """Answer whatever each channel has outstanding, a few rounds over."""
    for _ in range(rounds):
        for channel in channels:
            if channel.batches and not channel.batches[-1][2].done():
                channel.answer()
        await settle()


def test_a_sequence_stays_on_the_worker_that_took_its_first_job():
    async def main():
        mv = model(batch_size=2)
        one, two = MemoryChannel(), MemoryChannel()
        tasks = [asyncio.ensure_future(dispatcher(mv, c).serve()) for c in (one, two)]
        await settle()
        first = submit(mv, "s1", "seq")
        await settle()
        owner, other = (one, two) if sent(one) else (two, one)
        for name in ("p1", "s2", "p2", "p3", "s3", "p4"):
            submit(mv, name, "seq" if name.startswith("s") else None)
            await answer_all([one, two], 2)
        await answer_all([one, two])
        owned = [i for batch in sent(owner) for i in batch if i.startswith("s")]
        assert owned == ["s1", "s2", "s3"]
        assert not [i for batch in sent(other) for i in batch if i.startswith("s")]
        assert all(len(b) == 1 for b in sent(owner) if b[0].startswith("s"))   # one at a time
        assert first.finished and mv.queue.sequences.owner_of("seq") is not None
        for task in tasks:
            task.cancel()
    run(main())


def test_a_sequence_job_does_not_wait_for_a_batch_to_fill():
    async def main():
        mv, channel = model(batch_size=4, delay_ms=1000), MemoryChannel()
        task = asyncio.ensure_future(dispatcher(mv, channel).serve())
        submit(mv, "s1", "seq")
        await settle()
        channel.answer()
        submit(mv, "p1")          # the batch of p1 waits up to 1 s for partners
        await settle()
        start = asyncio.get_running_loop().time()
        submit(mv, "s2", "seq")
        await asyncio.sleep(0.001)
        assert sent(channel) == [["s1"], ["s2"]]
        assert asyncio.get_running_loop().time() - start < 0.01
        channel.answer()
        await asyncio.sleep(1.1)
        assert sent(channel)[-1] == ["p1"]
        task.cancel()
    run(main())


def test_a_dead_workers_sequence_goes_to_the_next_worker():
    async def main():
        mv, first = model(), MemoryChannel()
        serving = asyncio.ensure_future(dispatcher(mv, first).serve())
        job = submit(mv, "s1", "seq")
        await settle()
        first.lose()
        await serving
        assert not job.finished and mv.queue.sequences.owner_of("seq") is None
        second = MemoryChannel()
        task = asyncio.ensure_future(dispatcher(mv, second).serve())
        await settle()
        assert sent(second) == [["s1"]]
        task.cancel()
    run(main())


def test_ending_a_sequence_fails_what_waits_in_it_and_abandon_drops_a_job():
    async def main():
        mv = model()
        waiting, gone = submit(mv, "s1", "seq"), submit(mv, "s2", "seq")
        mv.queue.abandon(gone)
        assert mv.queue.sequences.depth == 1
        mv.queue.sequences.end("seq", ServiceUnavailable("Sequence seq ended"))
        error = failed(await waiting.next_event())
        assert error.message == "Sequence seq ended"
        assert not mv.queue.sequences and mv.queue.depth == 0
        closing = submit(mv, "s3", "other")
        assert mv.queue.close(ServiceUnavailable("unregistered")) == 1
        assert isinstance(await closing.next_event(), Failure)
    run(main())


def test_a_sequence_job_and_a_plain_one_arriving_together_lose_nothing():
    async def main():
        mv, channel = model(batch_size=2, delay_ms=1000), MemoryChannel()
        task = asyncio.ensure_future(dispatcher(mv, channel).serve())
        submit(mv, "s1", "seq")
        await settle()
        channel.answer()
        plain = [submit(mv, "p1")]
        await settle()                       # p1's batch is filling
        submit(mv, "s2", "seq")              # wakes the dispatcher to take s2, and in the
        plain.append(submit(mv, "p2"))       # same tick p2 completes the batch it cancels
        for _ in range(5):
            await asyncio.sleep(0.001)
            if channel.batches and not channel.batches[-1][2].done():
                channel.answer()
        assert sorted(map(tuple, sent(channel))) == [("p1", "p2"), ("s1",), ("s2",)]
        assert all(job.finished for job in plain)
        task.cancel()
    run(main())
