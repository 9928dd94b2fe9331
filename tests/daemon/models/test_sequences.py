"""Sequences (daemon/models/sequences.py and their use by the queue and the dispatcher): a
sequence's requests all go to the dispatcher that took its first, one at a time, in order;
sequences batch together and spread over the workers; a sequence request is not held up by a
batch that is filling; a worker that dies ends its sequences (never hands them on); limits,
expiry and the end header refuse or close as TorchServe's keys say. Virtual time, in-memory
channels.
"""
from __future__ import annotations

import asyncio
import dataclasses

import pytest

from daemon.errors import ServiceUnavailable, TorchdError
from daemon.models.job import Failure, Job
from daemon.models.sequences import SequenceRules
from tests.daemon.models.dispatch_helpers import MemoryChannel, dispatcher, model, settle
from tests.support.virtual_time import run_on_virtual_time as run

RULES = SequenceRules("m", max_open=8, max_waiting=4, idle_s=0.0, lifetime_s=0.0)


def failed(event):
    """The error a Failure event carries (anything else fails the test)."""
    assert isinstance(event, Failure), event
    return event.error


def submit(mv, name: str, sequence: str | None = None, rules: SequenceRules = RULES,
           start: bool = False, headers: list | None = None) -> Job:
    job = Job(id=name, request={"id": name, "headers": headers or []},
              arrival=asyncio.get_running_loop().time())
    job.sequence = sequence
    if sequence is None:
        mv.queue.submit(job)
    else:
        mv.queue.submit_sequence(job, rules, start)
    return job


def refusal(mv, name: str, sequence: str, rules: SequenceRules = RULES,
            start: bool = False) -> str:
    with pytest.raises(ServiceUnavailable) as info:
        submit(mv, name, sequence, rules, start)
    assert info.value.message.startswith('Model "m" has no worker to serve inference request.')
    return info.value.message


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
        assert all(sum(i.startswith("s") for i in b) <= 1 for b in sent(owner))   # one at a time
        assert first.finished and mv.queue.sequences.owner_of("seq") is not None
        for task in tasks:
            task.cancel()
    run(main())


def test_sequences_batch_together_and_spread_over_the_workers():
    async def main():
        mv = model(batch_size=4)
        one, two = MemoryChannel(), MemoryChannel()
        feeders = [dispatcher(mv, c) for c in (one, two)]
        tasks = [asyncio.ensure_future(f.serve()) for f in feeders]
        await settle()
        for i in range(4):
            submit(mv, f"a{i}", f"seq{i}")
        await settle()
        assert sorted(len(b) for c in (one, two) for b in sent(c)) == [2, 2]
        owners = {mv.queue.sequences.owner_of(f"seq{i}") for i in range(4)}
        assert owners == set(feeders)
        await answer_all([one, two])
        for i in range(4):
            submit(mv, f"b{i}", f"seq{i}")
        await settle()
        for channel in (one, two):   # each sequence's second request went where its first did
            firsts = {i[1] for i in sent(channel)[0]}
            assert {i[1] for i in sent(channel)[1]} == firsts
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
        submit(mv, "s2", "seq")   # goes at once, and takes the waiting p1 along
        await asyncio.sleep(0.001)
        assert sent(channel) == [["s1"], ["s2", "p1"]]
        assert asyncio.get_running_loop().time() - start < 0.01
        channel.answer()
        await asyncio.sleep(1.1)
        assert len(sent(channel)) == 2
        task.cancel()
    run(main())


def test_a_dead_workers_sequences_end_and_are_never_sent_elsewhere():
    async def main():
        mv, first = model(), MemoryChannel()
        serving = asyncio.ensure_future(dispatcher(mv, first).serve())
        running = submit(mv, "s1", "seq")
        await settle()
        waiting = submit(mv, "s2", "seq")
        first.lose()
        await serving
        assert failed(await running.next_event()).message == "Worker died."
        assert "sequence seq lost its state: its worker stopped" in \
            failed(await waiting.next_event()).message
        second = MemoryChannel()
        task = asyncio.ensure_future(dispatcher(mv, second).serve())
        assert "lost its state" in refusal(mv, "s3", "seq")   # its next request is told why
        submit(mv, "s4", "seq", start=True)                   # the start header reopens it
        await settle()
        assert sent(second) == [["s4"]]
        task.cancel()
    run(main())


def test_limits_refuse_with_torchserve_s_error():
    async def main():
        mv = model()
        rules = dataclasses.replace(RULES, max_open=2, max_waiting=1)
        submit(mv, "a1", "a", rules)
        submit(mv, "b1", "b", rules)
        assert "sequence c not opened: 2 sequences are open (maxNumSequence)" in \
            refusal(mv, "c1", "c", rules)
        assert "sequence a has 1 request(s) waiting (maxSequenceJobQueueSize)" in \
            refusal(mv, "a2", "a", rules)
    run(main())


def test_idle_and_old_sequences_expire():
    async def main():
        mv, channel = model(), MemoryChannel()
        task = asyncio.ensure_future(dispatcher(mv, channel).serve())
        idle = dataclasses.replace(RULES, idle_s=0.5)
        submit(mv, "i1", "idle", idle)
        await settle()
        channel.answer()
        await asyncio.sleep(0.4)
        submit(mv, "i2", "idle", idle)        # in time: the idle clock restarts after it
        await settle()
        channel.answer()
        await asyncio.sleep(0.6)
        assert "sequence idle expired: no request for 500 ms (sequenceMaxIdleMSec)" in \
            refusal(mv, "i3", "idle", idle)
        old = dataclasses.replace(RULES, lifetime_s=1.0)
        submit(mv, "o1", "old", old)
        await settle()
        channel.answer()
        await asyncio.sleep(1.0)
        assert "sequence old expired: open longer than 1000 ms (sequenceTimeoutMSec)" in \
            refusal(mv, "o2", "old", old)
        assert not mv.queue.sequences
        task.cancel()
    run(main())


def test_the_end_header_closes_a_sequence_from_either_side():
    async def main():
        mv, channel = model(), MemoryChannel()
        task = asyncio.ensure_future(dispatcher(mv, channel).serve())
        submit(mv, "a1", "a", headers=[["ts_request_sequence_end", "true"]])
        await settle()
        channel.answer()
        await settle()
        assert "sequence a was ended" in refusal(mv, "a2", "a")
        submit(mv, "b1", "b")
        submit(mv, "c1", "c")
        await settle()
        requests, on_result, result = channel.batches[-1]
        ended = {"responses": [{"id": r["id"], "body": b"ok",
                                "headers": [["ts_request_sequence_end", "b;c"]]}
                               for r in requests]}
        on_result(ended)
        result.set_result(ended)
        await settle()
        assert not mv.queue.sequences
        task.cancel()
    run(main())


def test_ending_a_sequence_fails_what_waits_in_it_and_abandon_drops_a_job():
    async def main():
        mv = model()
        waiting, gone = submit(mv, "s1", "seq"), submit(mv, "s2", "seq")
        mv.queue.abandon(gone)
        assert mv.queue.sequences.depth == 1
        mv.queue.sequences.end("seq", "sequence seq ended with its gRPC stream")
        error: TorchdError = failed(await waiting.next_event())
        assert error.message.endswith("(sequence seq ended with its gRPC stream)")
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
        await asyncio.sleep(1.1)             # a plain job left alone waits out its delay
        await answer_all([channel])
        ids = sorted(i for batch in sent(channel) for i in batch)
        assert ids == ["p1", "p2", "s1", "s2"]
        assert all(job.finished for job in plain)
        task.cancel()
    run(main())
