"""A job's typed events and its flow control (daemon/models/job.py), without processes."""
from __future__ import annotations

import asyncio

from daemon.errors import InternalServerError, StreamCutOff
from daemon.models.job import (GONE, PART_OVERHEAD, PARTS_HIGH, PARTS_LOW, Answer, Failure, Job,
                               Part, StreamLimits)
from tests.support.virtual_time import run_on_virtual_time as run


class Source:
    """A job's source as its dispatcher is (job.py's FlowSource): it pauses its worker for a
    job unless ``shared`` (the worker serves other requests too)."""

    def __init__(self, shared: bool = False) -> None:
        self.shared = shared
        self.holders: set[str] = set()

    def hold(self, job: Job) -> bool:
        if self.shared:
            return False
        self.holders.add(job.id)
        return True

    def release(self, job_id: str) -> None:
        self.holders.discard(job_id)


def running_job(channel: Source, backlog_limit: int = 10 ** 9) -> Job:
    job = Job("a", {"id": "a"}, 0.0, StreamLimits(backlog_limit, send_timeout=60.0))
    job.source = channel   # as the dispatcher sets it when it sends the batch
    return job


def test_a_handler_error_is_a_failure_typed_as_torchserve_types_it():
    async def main():
        job = Job("a", {"id": "a"}, 0.0)
        job.finish({"id": "a", "error": True, "status": 513, "reason": "bad input"})
        event = await job.next_event()
        assert isinstance(event, Failure) and isinstance(event.error, InternalServerError)
        assert (event.status, event.error.message) == (513, "bad input")
    run(main())


def test_statuses_of_the_events():
    assert Answer({"status": 201}).status == 201 and Part({}).status == 200
    assert Failure(InternalServerError("x", status=507)).status == 507
    assert GONE.status == 499
    assert Answer({}).final and not Part({}).final and GONE.final


def test_a_reader_that_falls_behind_holds_the_worker_until_it_catches_up():
    async def main():
        channel = Source()
        job = running_job(channel)
        for n in range(PARTS_HIGH - 1):
            job.send_part({"body": b"%d" % n})
        assert channel.holders == set()
        job.send_part({"body": b"last straw"})
        assert channel.holders == {"a"} and job.held
        while len(job._events) > PARTS_LOW + 1:
            await job.next_event()
        assert channel.holders == {"a"}   # still behind
        await job.next_event()
        assert channel.holders == set() and not job.held
    run(main())


def test_the_end_of_a_job_lets_go_of_its_worker():
    async def main():
        for end in ("finish", "fail", "abandon"):
            channel = Source()
            job = running_job(channel)
            for n in range(PARTS_HIGH):
                job.send_part({"body": b"%d" % n})
            assert channel.holders == {"a"}
            if end == "finish":
                job.finish({"body": b"done"})
            elif end == "fail":
                job.fail(InternalServerError("Worker died."))
            else:
                job.abandon()   # the client hung up
            assert channel.holders == set(), end
    run(main())


def test_parts_after_a_hang_up_are_dropped_and_never_hold_the_worker():
    """A streaming batch goes on in the worker after its client has gone (a handler without
    continuous batching generates to the end): its parts must not pile up and hold the
    worker's connection, which would stall the worker until the response timeout."""
    async def main():
        channel = Source()
        job = running_job(channel)
        job.send_part({"body": b"0"})
        job.abandon()                   # the client hung up mid-stream
        for n in range(2 * PARTS_HIGH):
            job.send_part({"body": b"%d" % n})
        job.hold()                      # a late pause holds nothing either
        assert channel.holders == set() and not job.held
        assert list(job._events) == [Part({"body": b"0"}), GONE]
    run(main())


def test_a_listener_pauses_and_resumes_by_hand_and_is_dropped_after_the_end():
    async def main():
        channel = Source()
        job = running_job(channel)
        heard: list = []
        job.listen(heard.append)
        job.send_part({"body": b"1"})
        job.hold()                      # its client stopped reading
        assert channel.holders == {"a"}
        job.release()
        assert channel.holders == set()
        job.finish({"body": b"2"})
        assert heard == [Part({"body": b"1"}), Answer({"body": b"2"})]
        assert job._listener is None    # no reference cycle outlives the request
        job.hold()                      # a late pause of a finished job holds nothing
        assert channel.holders == set()
    run(main())


def test_a_job_not_running_anywhere_holds_nothing():
    job = Job("a", {"id": "a"}, 0.0)
    job.hold()
    assert not job.held


# ---- a worker that serves others too: the job keeps its parts, up to its limit -------------

def test_behind_on_a_shared_worker_a_job_keeps_its_parts_and_holds_nothing():
    async def main():
        source = Source(shared=True)
        job = running_job(source, backlog_limit=(PARTS_HIGH + 8) * (PART_OVERHEAD + 4))
        for n in range(PARTS_HIGH + 8):
            job.send_part({"body": b"%04d" % n})
        assert source.holders == set() and not job.held and job.lagging
        assert job.backlog == (PARTS_HIGH + 8) * (PART_OVERHEAD + 4)   # at the limit, not past
        for n in range(PARTS_HIGH + 8):   # nothing lost: every part, in order
            assert await job.next_event() == Part({"body": b"%04d" % n})
        assert job.backlog == 0 and not job.cancelled
    run(main())


def test_past_its_limit_on_a_shared_worker_a_stream_is_cut_off():
    async def main():
        source = Source(shared=True)
        job = running_job(source, backlog_limit=100 * 1024)
        for n in range(PARTS_HIGH):
            job.send_part({"body": b"x" * 1024})
        assert not job.finished
        job.send_part({"body": b"x" * 100 * 1024})   # the last straw
        error = (await job.next_event()).error        # the queued parts are dropped
        assert isinstance(error, StreamCutOff) and error.status == 503
        assert "fell more than 102400 bytes behind (max_stream_buffer_size)" in error.message
        # it leaves its worker's batch as a hang-up does, and what the worker still sends
        # for it is dropped
        assert job.cancelled and job.finished and job.backlog == 0
        job.send_part({"body": b"late"})
        job.finish({"body": b"end"})
        assert not job._events and source.holders == set()
    run(main())


def test_a_reader_that_keeps_within_the_limit_is_never_cut_off():
    async def main():
        job = running_job(Source(shared=True), backlog_limit=PARTS_HIGH * (PART_OVERHEAD + 1024))
        for n in range(10 * PARTS_HIGH):
            job.send_part({"body": b"x" * 1024})
            if n >= PARTS_HIGH - 1:   # always a limit's worth behind, never more
                assert isinstance(await job.next_event(), Part)
        assert not job.cancelled and len(job._events) == PARTS_HIGH - 1
    run(main())


def test_a_job_that_may_hold_its_worker_is_never_cut_off():
    async def main():
        source = Source()
        job = running_job(source, backlog_limit=1024)
        for n in range(2 * PARTS_HIGH):   # what the worker had sent before it paused
            job.send_part({"body": b"x" * 1024})
        assert source.holders == {"a"} and not job.cancelled
        assert len(job._events) == 2 * PARTS_HIGH
    run(main())


def test_a_job_that_holds_its_worker_too_long_without_its_reader_is_cut_off():
    """response_send_timeout: a reader that takes no part for that long while the job holds
    its worker (a gRPC stream: the inference listener's sweep watches only HTTP) lets the
    worker go; one that takes a part in time keeps its stream."""
    async def main():
        source = Source()
        job = running_job(source)
        for n in range(PARTS_HIGH):
            job.send_part({"body": b"%d" % n})
        assert source.holders == {"a"}
        await asyncio.sleep(59)
        while len(job._events) > PARTS_LOW:   # it reads, and the worker goes on
            await job.next_event()
        assert source.holders == set() and not job.cancelled
        for n in range(PARTS_HIGH):           # then it stops again, for good
            job.send_part({"body": b"%d" % n})
        assert source.holders == {"a"}
        await asyncio.sleep(59.9)
        assert not job.cancelled
        await asyncio.sleep(0.2)
        error = (await job.next_event()).error   # its queued parts are dropped
        assert isinstance(error, StreamCutOff)
        assert error.message == ("Stream cut off: its client took none of it for 60 s "
                                 "(response_send_timeout)")
        assert source.holders == set() and job.cancelled and job._held_timer is None
    run(main(), timeout=600)


def test_a_reader_that_takes_parts_while_held_keeps_its_stream():
    """The limit is on taking nothing: a reader that takes a part every 50 s keeps its stream
    held for as long as it takes, and is cut off only 60 s after its last part."""
    async def main():
        source = Source()
        job = running_job(source)
        for n in range(PARTS_HIGH):
            job.send_part({"body": b"%d" % n})
        for _ in range(PARTS_HIGH - PARTS_LOW - 1):   # 550 s, held all along
            await asyncio.sleep(50)
            assert isinstance(await job.next_event(), Part)
        assert source.holders == {"a"} and not job.cancelled
        await asyncio.sleep(59.9)
        assert not job.cancelled
        await asyncio.sleep(0.2)
        assert job.cancelled and source.holders == set()
    run(main(), timeout=1200)
