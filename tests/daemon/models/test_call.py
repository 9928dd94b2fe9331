"""The prediction call (daemon/models/call.py): submission, refusals, the outcome counted once,
hang-ups, the request id, without processes."""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from daemon.errors import ModelNotFound, ServiceUnavailable
from daemon.models.call import Predictions, new_request_id
from daemon.models.job import GONE, Answer, Part
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
    def __init__(self, serving: bool = True) -> None:
        self.serving = serving

    def can_serve(self, mv) -> bool:
        return self.serving


def service(serving: bool = True, capacity: int = 10) -> tuple[Predictions, Counter, Registry]:
    registry = Registry()
    mv = ModelVersion(name="m", version="1.0", url="m.mar", handler="h", runtime="python",
                      archive=None, settings=ModelSettings(), queue=JobQueue(capacity))
    registry.add(mv)
    counter = Counter()
    return Predictions(registry, Servers(serving), counter), counter, registry


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
        call.job.source = SimpleNamespace(hold=holders.add, release=holders.discard)
        call.pause()
        assert holders == {call.id}
        call.resume()
        assert holders == set()
    run(main())
