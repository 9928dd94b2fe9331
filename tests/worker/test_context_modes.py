"""What the serving modes add to the Context (in-process): TorchServe's sequence header keys,
stopping_criteria, per-batch copies for async mode, and awaiting on the worker's loop."""
from __future__ import annotations

import asyncio

from protocol.messages import SEQUENCE_HEADERS
from worker import eventloop
from worker.runtime.context import Context


def context(**kwargs) -> Context:
    return Context("m", "/models/m", {}, 4, None, "1.0", model_yaml_config={"k": 1}, **kwargs)


def test_sequence_header_keys_default_to_torchserve_names():
    ctx = context()
    assert (ctx.header_key_sequence_id, ctx.header_key_sequence_start,
            ctx.header_key_sequence_end) == (SEQUENCE_HEADERS["id"], SEQUENCE_HEADERS["start"],
                                             SEQUENCE_HEADERS["end"])
    ctx.begin_batch(["a"], [{"ts_request_sequence_id": "s9"}])
    assert ctx.get_sequence_id(0) == "s9"
    assert ctx.stopping_criteria is None


def test_sequence_header_keys_follow_the_load_frame():
    ctx = context(sequence_headers={"id": "x-seq", "start": "x-start", "end": "x-end"})
    assert (ctx.header_key_sequence_id, ctx.header_key_sequence_start,
            ctx.header_key_sequence_end) == ("x-seq", "x-start", "x-end")
    ctx.begin_batch(["a", "b"], [{"X-Seq": "s1", "ts_request_sequence_id": "no"}, {}])
    assert (ctx.get_sequence_id(0), ctx.get_sequence_id(1)) == ("s1", None)


def test_handlers_may_set_their_own_attributes():
    ctx = context()
    ctx.cache = {"kept": 1}
    ctx.stopping_criteria = [len]
    assert ctx.cache == {"kept": 1} and ctx.stopping_criteria == [len]


def test_batch_copies_share_the_model_but_not_the_batch():
    ctx = context()
    ctx.cache = {}
    first = ctx.for_batch(["a"], [{"h": "1"}])
    second = ctx.for_batch(["b", "c"], [{"h": "2"}, {}])
    first.set_response_status(404, "no", 0)
    first.stopping_criteria = [len]
    first.cache["shared"] = True
    assert (first.get_request_id(0), second.get_request_id(0)) == ("a", "b")
    assert (first.get_request_header(0, "h"), second.get_request_header(0, "h")) == ("1", "2")
    assert second.get_response_status(0) == (200, "")
    assert second.stopping_criteria is None and ctx.request_ids is None
    assert ctx.cache == {"shared": True} and second.cache is ctx.cache
    assert first.metrics is second.metrics is ctx.metrics
    assert first.model_yaml_config is ctx.model_yaml_config


def test_the_shared_recorder_sees_the_request_ids_of_the_task_that_records():
    ctx = context()

    async def record(request_id: str, pause: float) -> None:
        batch = ctx.for_batch([request_id], [{}])
        batch.bind_to_task()
        await asyncio.sleep(pause)   # the other task binds its batch meanwhile
        batch.metrics.add_counter("Seen", 1, idx=0)

    async def both() -> None:
        await asyncio.gather(record("first", 0.02), record("second", 0))

    asyncio.run(both())
    assert sorted(r.request_id for r in ctx.metrics.records) == ["first", "second"]
    assert ctx.metrics.take_pending()[0]["dimensions"] == [["ModelName", "m"],
                                                           ["Level", "Model"]]
    ctx.metrics.add_counter("Outside", 1, idx=0)   # no batch bound here, none begun
    assert ctx.metrics.records[-1].request_id is None


def test_settle_awaits_on_one_reused_loop():
    loops = []

    async def coroutine(value: int) -> int:
        loops.append(asyncio.get_running_loop())
        return value

    class Awaitable:
        def __await__(self):
            return coroutine(2).__await__()

    assert eventloop.settle(coroutine(1)) == 1
    assert eventloop.settle(Awaitable()) == 2
    assert eventloop.settle([3]) == [3]
    assert loops[0] is loops[1] is eventloop.worker_loop()
