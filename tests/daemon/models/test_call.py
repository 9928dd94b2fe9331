"""The prediction call (daemon/models/call.py): submission, refusals, the outcome counted once,
hang-ups, the request id, without processes."""
from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace

import pytest

from daemon.errors import ModelNotFound, RequestTimeout, ServiceUnavailable, StreamCutOff
from daemon.models.call import Predictions, new_request_id
from daemon.models.job import GONE, Answer, Failure, Part, StreamLimits
from daemon.models.queue import JobQueue
from daemon.models.registry import ModelSettings, ModelVersion, Registry
from tests.support.virtual_time import run_on_virtual_time as run


class Counter:
    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def observe_request(self, model, version, status, queue_us, latency_us,
                        named_version=False) -> None:
        self.seen.append((model, version, status, named_version))


class Servers:
    def __init__(self, serving: bool = True, free: int = 0) -> None:
        self.serving = serving
        self.free = free          # what free_workers says (useJobTicket)

    def can_serve(self, mv) -> bool:
        return self.serving

    def free_workers(self, mv) -> int:
        return self.free - mv.queue.depth


def service(serving: bool = True, capacity: int = 10, free: int = 0,
            **settings) -> tuple[Predictions, Counter, Registry]:
    registry = Registry()
    mv = ModelVersion(name="m", version="1.0", url="m.mar", handler="h", runtime="python",
                      archive=None, settings=ModelSettings(**settings), queue=JobQueue(capacity))
    registry.add(mv)
    counter = Counter()
    return Predictions(registry, Servers(serving, free), counter), counter, registry


def test_request_ids_are_uuid4_text():
    ids = {new_request_id() for _ in range(200)}
    assert len(ids) == 200
    for rid in ids:
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                            rid)


def test_the_outcome_is_counted_once_with_the_first_events_status():
    async def main():
        predictions, counter, _ = service()
        call = predictions.start("m", None, [["h", "v"]], [], request_id="rid")
        assert call.id == "rid" and call.job.request["id"] == "rid"
        call.job.send_part({"id": "rid", "body": b"1", "status": 206})
        call.job.finish({"id": "rid", "body": b"2"})
        assert await call.next_event() == Part({"id": "rid", "body": b"1", "status": 206})
        assert await call.next_event() == Answer({"id": "rid", "body": b"2"})
        assert counter.seen == [("m", "1.0", 206, False)]
    run(main())


def test_a_named_version_is_a_label_and_a_listener_counts_too():
    async def main():
        predictions, counter, _ = service()
        call = predictions.start("m", "1.0", [], [])
        heard: list = []
        call.listen(heard.append)
        call.job.finish({"id": call.id, "body": b"x", "status": 201})
        assert heard == [Answer({"id": call.id, "body": b"x", "status": 201})]
        assert counter.seen == [("m", "1.0", 201, True)]
    run(main())


def test_refusals_are_counted_and_raised():
    async def main():
        predictions, counter, _ = service(serving=False)
        with pytest.raises(ServiceUnavailable, match="has no worker"):
            predictions.start("m", None, [], [])
        predictions, counter2, _ = service(capacity=1)
        predictions.start("m", None, [], [])
        with pytest.raises(ServiceUnavailable, match="job queue is full"):
            predictions.start("m", None, [], [])
        with pytest.raises(ModelNotFound):   # no version to count it for
            predictions.start("nope", None, [], [])
        assert [s[2] for s in counter.seen + counter2.seen] == [503, 503]
    run(main())


def test_a_hang_up_drops_a_waiting_call_and_counts_499():
    async def main():
        predictions, counter, registry = service()
        call = predictions.start("m", None, [], [])
        call.hang_up()
        assert await call.next_event() is GONE
        assert registry.get("m").queue.depth == 0 and counter.seen[0][2] == 499
    run(main())


def test_a_hang_up_after_the_answer_changes_nothing():
    async def main():
        predictions, counter, _ = service()
        call = predictions.start("m", None, [], [])
        call.job.finish({"id": call.id, "body": b"x"})
        call.hang_up()
        assert isinstance(await call.next_event(), Answer)
        assert counter.seen == [("m", "1.0", 200, False)]
    run(main())


def test_pause_and_resume_reach_the_worker_connection():
    async def main():
        predictions, _, _ = service()
        call = predictions.start("m", None, [], [])
        holders: set = set()

        def hold(job):
            holders.add(job.id)
            return True

        call.job.source = SimpleNamespace(hold=hold, release=holders.discard)
        assert call.pause()
        assert holders == {call.id}
        call.resume()
        assert holders == set()
        # a worker that serves others too is not paused: the reader bounds the stream and
        # cuts it off (the inference listener's direct path, by its connection's buffer)
        call.job.source = SimpleNamespace(hold=lambda job: False, release=holders.discard)
        assert not call.pause() and holders == set()
        call.cut_off("its client fell more than 10 bytes behind")
        assert call.job.cancelled
        assert isinstance((await call.next_event()).error, StreamCutOff)
    run(main())


def test_the_stream_limit_is_the_configured_one():
    async def main():
        predictions, _, registry = service()
        assert predictions.start("m", None, [], []).job.limits == StreamLimits(4 << 20, 60.0)
        limits = StreamLimits(buffer_size=1000, send_timeout=2.0)
        limited = Predictions(registry, Servers(True, 0), Counter(), stream_limits=limits)
        assert limited.start("m", None, [], []).job.limits is limits
    run(main())


# ---- useJobTicket -------------------------------------------------------------------------

def test_a_job_ticket_model_takes_a_request_only_while_a_worker_is_free():
    async def main():
        predictions, counter, registry = service(free=1, use_job_ticket=True)
        predictions.start("m", None, [], [])          # the one free worker's
        with pytest.raises(ServiceUnavailable, match="has no worker to serve inference") as exc:
            predictions.start("m", None, [], [])
        assert exc.value.status == 503 and registry.get("m").queue.depth == 1
        assert [s[2] for s in counter.seen] == [503]   # the refusal is counted
        without, _, _ = service(free=0)                # without tickets: a worker can serve
        without.start("m", None, [], [])
    run(main())


# ---- clientTimeoutInMills ---------------------------------------------------------------

def test_a_waiting_call_times_out_at_its_client_timeout_and_leaves_the_queue():
    async def main():
        loop = asyncio.get_running_loop()
        predictions, counter, registry = service(client_timeout_ms=300)
        started = loop.time()
        call = predictions.start("m", None, [], [])
        event = await call.next_event()
        assert loop.time() - started == pytest.approx(0.3)
        assert isinstance(event, Failure) and isinstance(event.error, RequestTimeout)
        assert event.error.message == ('Model "m" did not answer within 300 ms '
                                       '(clientTimeoutInMills)')
        queue = registry.get("m").queue
        assert queue.depth == 0 and call.job.cancelled      # never dispatched now
        assert queue.take_ready(1, 0) is None
        assert counter.seen == [("m", "1.0", 504, False)]
    run(main())


def test_a_running_call_times_out_and_its_late_answer_is_dropped():
    async def main():
        predictions, counter, registry = service(client_timeout_ms=300)
        call = predictions.start("m", None, [], [])
        assert registry.get("m").queue.take_ready(1, 0) == [call.job]   # in a worker now
        heard: list = []
        call.listen(heard.append)
        await asyncio.sleep(0.3)
        call.job.finish({"id": call.id, "body": b"late"})
        assert [type(e) for e in heard] == [Failure] and heard[0].status == 504
        assert counter.seen == [("m", "1.0", 504, False)]
    run(main())


def test_an_answer_in_time_stops_the_client_timeout():
    async def main():
        predictions, counter, _ = service(client_timeout_ms=300)
        call = predictions.start("m", None, [], [])
        await asyncio.sleep(0.299)
        call.job.finish({"id": call.id, "body": b"x"})
        assert isinstance(await call.next_event(), Answer)
        assert call._timer is None
        await asyncio.sleep(1)
        assert counter.seen == [("m", "1.0", 200, False)]
        untimed = service()[0].start("m", None, [], [])   # the default: no timer at all
        assert untimed._timer is None
    run(main())
