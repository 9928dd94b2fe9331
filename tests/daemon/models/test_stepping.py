"""Continuous batching's dispatcher (daemon/models/stepping.py): requests join the worker's
running batch at step boundaries, one JOIN frame per step at most; parts stream, finals answer;
hang-ups leave at the next step; a missed step or a death answers the whole running batch.
Virtual time, an in-memory channel."""
from __future__ import annotations

import asyncio
from typing import Any

from daemon.errors import InternalServerError
from daemon.models.job import Answer, Failure, Job, Part
from daemon.models.stepping import StepDispatcher
from tests.daemon.models.dispatch_helpers import MemoryChannel, model, settle
from tests.support.virtual_time import run_on_virtual_time as run


class StepChannel(MemoryChannel):
    """A worker with a running batch, driven by the test: ``step`` answers one step."""

    def __init__(self, refuse: bool = False) -> None:
        super().__init__(refuse)
        self.joins: list[tuple[list[str], list[str]]] = []
        self.acks = 0
        self.running: list[str] = []
        self.on_step: Any = None

    def join(self, batch_id, requests, cancel, acks, on_part, on_step) -> None:
        if self.refuse or self.lost.done():
            raise ConnectionResetError("worker closed its socket")
        self.acks += acks
        if requests or cancel:
            self.joins.append(([r["id"] for r in requests], list(cancel)))
        self.running = [i for i in self.running if i not in cancel] + [r["id"] for r in requests]
        self.on_step = on_step

    def end_batch(self, batch_id: int | None = None) -> None:
        # the running batch must stay known to the connection: a late STEP still gets its ack
        assert batch_id is None
        super().end_batch()

    def step(self, done: set[str]) -> None:
        """One step: every running request gets a part, those in ``done`` their answer."""
        responses = [{"id": i, "body": f"{i}-step".encode(), **({} if i in done else
                                                                 {"more": True})}
                     for i in self.running]
        self.running = [i for i in self.running if i not in done]
        self.on_step({"batch_id": 1, "responses": responses})


def submit(mv, name: str) -> Job:
    job = Job(id=name, request={"id": name}, arrival=asyncio.get_running_loop().time())
    mv.queue.submit(job)
    return job


def stepper(mv, channel: StepChannel) -> StepDispatcher:
    return StepDispatcher(mv, channel, asyncio.get_running_loop().time,
                          death_error=lambda: InternalServerError("Worker died."))


def test_requests_join_at_step_boundaries_and_stream_until_done():
    async def main():
        mv, channel = model(batch_size=4), StepChannel()
        feeder = stepper(mv, channel)
        serving = asyncio.ensure_future(feeder.serve())
        a, b = submit(mv, "a"), submit(mv, "b")
        await settle()
        assert channel.joins == [(["a", "b"], [])] and feeder.batch
        c = submit(mv, "c")            # arrives mid-step: it waits for the step's end
        await settle()
        assert len(channel.joins) == 1
        channel.step(done={"a"})
        assert channel.joins[-1] == (["c"], [])   # one frame: the next step's joins
        assert await a.next_event() == Answer({"id": "a", "body": b"a-step"})
        assert await b.next_event() == Part({"id": "b", "body": b"b-step", "more": True})
        channel.step(done={"b", "c"})
        assert isinstance(await b.next_event(), Answer)
        assert isinstance(await c.next_event(), Answer)   # c's one step
        await settle()
        assert feeder.batch is None and feeder.served == 3 and feeder.answered == 2
        assert len(channel.joins) == 2 and channel.acks == 2   # every STEP acknowledged
        feeder.stop(asyncio.get_running_loop().time())
        assert await serving is None
    run(main())


def test_the_running_batch_holds_batch_size_and_hang_ups_leave_at_the_next_step():
    async def main():
        mv, channel = model(batch_size=2), StepChannel()
        serving = asyncio.ensure_future(stepper(mv, channel).serve())
        a, b, c = submit(mv, "a"), submit(mv, "b"), submit(mv, "c")
        await settle()
        assert channel.joins == [(["a", "b"], [])] and mv.queue.depth == 1
        mv.queue.abandon(b)            # b's client hangs up while it runs
        channel.step(done=set())
        assert channel.joins[-1] == (["c"], ["b"])   # b leaves, c takes its place
        assert channel.running == ["a", "c"] and not c.finished
        channel.step(done={"a", "c"})
        assert isinstance(await a.next_event(), Part)
        assert isinstance(await a.next_event(), Answer)
        assert isinstance(await c.next_event(), Answer)
        serving.cancel()
    run(main())


def test_a_step_past_its_response_timeout_answers_the_whole_batch_504():
    async def main():
        mv, channel = model(batch_size=2, timeout=5), StepChannel()
        serving = asyncio.ensure_future(stepper(mv, channel).serve())
        a, b = submit(mv, "a"), submit(mv, "b")
        await settle()
        channel.step(done=set())       # the first step came in time: the clock restarts
        await asyncio.sleep(4)
        channel.step(done=set())
        started = asyncio.get_running_loop().time()
        assert await serving == "response timeout after 5 s"
        assert asyncio.get_running_loop().time() - started == 5
        assert channel.closed
        for job in (a, b):
            events = [await job.next_event() for _ in range(3)]
            assert isinstance(events[-1], Failure) and events[-1].error.status == 504
    run(main())


def test_a_death_fails_streamed_requests_and_sends_the_others_again():
    async def main():
        mv, channel = model(batch_size=2), StepChannel()
        serving = asyncio.ensure_future(stepper(mv, channel).serve())
        a = submit(mv, "a")
        await settle()
        channel.step(done=set())       # a streamed a part: it can never run again
        b = submit(mv, "b")
        await settle()                 # b waits in the queue for the next step
        channel.joins.clear()
        channel.running.append("x")    # (unknown ids in a step are ignored)
        channel.lose()
        assert await serving == "worker closed its socket"
        assert isinstance(await a.next_event(), Part)
        assert (await a.next_event()).error.message == "Worker died."
        assert not b.finished and mv.queue.depth == 1   # never sent: still first in line
    run(main())


def test_a_step_that_comes_after_the_batch_emptied_is_acknowledged_too():
    async def main():
        mv, channel = model(batch_size=2), StepChannel()
        feeder = stepper(mv, channel)
        serving = asyncio.ensure_future(feeder.serve())
        a = submit(mv, "a")
        await settle()
        mv.queue.abandon(a)
        channel.step(done=set())       # a goes on, but its client is gone: the batch empties
        assert channel.joins[-1] == ([], ["a"]) and feeder.batch is None and channel.acks == 1
        # The worker ran one more step (its window) before it read the cancel:
        channel.on_step({"batch_id": 1, "responses": [{"id": "a", "body": b"", "more": True}]})
        assert channel.acks == 2       # acknowledged, or the worker's window would shrink
        b = submit(mv, "b")
        await settle()
        channel.step(done={"b"})
        assert isinstance(await b.next_event(), Answer) and channel.acks == 3
        feeder.stop(asyncio.get_running_loop().time())
        assert await serving is None
    run(main())


def test_a_client_behind_never_pauses_a_running_batch():
    """Requests join a running batch as they come: pausing its worker for one client that is
    not reading would stall every other stream in it and every request waiting to join."""
    async def main():
        mv, channel = model(batch_size=4), StepChannel()
        feeder = stepper(mv, channel)
        serving = asyncio.ensure_future(feeder.serve())
        a = submit(mv, "a")
        await settle()
        assert channel.running == ["a"]
        assert a.source is feeder and not a.hold() and channel.holders == set()
        a.cut_off("its client fell more than 10 bytes behind")
        channel.step(done=set())
        assert channel.joins[-1] == ([], ["a"])   # it leaves at the next step, as a hang-up
        feeder.stop(asyncio.get_running_loop().time())
        assert await serving is None
    run(main())
