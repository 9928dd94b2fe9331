"""A job's typed events and its flow control (daemon/models/job.py), without processes."""
from __future__ import annotations

from daemon.errors import InternalServerError
from daemon.models.job import GONE, PARTS_HIGH, PARTS_LOW, Answer, Failure, Job, Part
from tests.daemon.models.dispatch_helpers import MemoryChannel
from tests.support.virtual_time import run_on_virtual_time as run


def running_job(channel: MemoryChannel) -> Job:
    job = Job("a", {"id": "a"}, 0.0)
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
        channel = MemoryChannel()
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
            channel = MemoryChannel()
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
        channel = MemoryChannel()
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
        channel = MemoryChannel()
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
