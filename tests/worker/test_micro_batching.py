"""``ts.handler_utils.micro_batching.MicroBatching`` in-process: TorchServe's interface (the
constructor, ``parallelism``, ``micro_batch_size``, ``thread_groups``, ``get_micro_batch_idx``,
called as ``handle(data, context)``), answers in the batch's order with the steps overlapping,
and a failing step failing the call instead of hanging it."""
from __future__ import annotations

import importlib
import threading
from typing import Any

import pytest

from worker.runtime.context import Context
from worker.ts.handler_utils.micro_batching import HANDLER_METHODS, MicroBatching
from worker.ts.torch_handler.base_handler import BaseHandler
from worker.ts.utils.util import PredictionException
from worker.ts_alias import install_ts_alias

pytestmark = pytest.mark.timeout(30)


class Doubling(BaseHandler):
    """Rows are numbers: preprocess keeps them, inference doubles them, postprocess tags them.
    Records which micro-batch each step saw, and can hold inference until told to go on."""

    def __init__(self, micro_batch_size: int = 1, **parallelism: int) -> None:
        super().__init__()
        self.seen: dict[str, set[int | None]] = {step: set() for step in HANDLER_METHODS}
        self.release = threading.Event()
        self.release.set()
        self.inference_entered = threading.Semaphore(0)
        self.handle = MicroBatching(self, micro_batch_size, parallelism or None)

    def _saw(self, step: str) -> None:
        self.seen[step].add(self.handle.get_micro_batch_idx())

    def preprocess(self, data: list[Any]) -> list[Any]:
        self._saw("preprocess")
        if any(row["body"] == "fail" for row in data):
            raise PredictionException("a row that fails", 422)
        return [row["body"] for row in data]

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> list[Any]:
        self._saw("inference")
        self.inference_entered.release()
        assert self.release.wait(10)
        return [value * 2 for value in data]

    def postprocess(self, data: Any) -> list[Any]:
        self._saw("postprocess")
        return [{"value": value} for value in data]


def context(size: int) -> Context:
    ctx = Context("m", "/tmp", {"model": {}}, size, None, "test")
    ctx.begin_batch([f"r{i}" for i in range(size)], [{} for _ in range(size)])
    return ctx


def rows(values: list[Any]) -> list[dict[str, Any]]:
    return [{"body": value} for value in values]


@pytest.fixture
def made() -> list[MicroBatching]:
    pipelines: list[MicroBatching] = []
    yield pipelines
    for pipeline in pipelines:
        pipeline.shutdown()


def doubling(made: list[MicroBatching], *args: Any, **kwargs: Any) -> Doubling:
    handler = Doubling(*args, **kwargs)
    made.append(handler.handle)
    return handler


def test_answers_come_back_in_order_from_every_micro_batch(made):
    handler = doubling(made, 2, preprocess=1, inference=3, postprocess=2)
    values = list(range(7))
    assert handler.handle(rows(values), context(7)) == [{"value": v * 2} for v in values]
    assert handler.seen["preprocess"] == handler.seen["postprocess"] == {0, 1, 2, 3}
    assert handler.handle.micro_batch_size == 2
    assert handler.handle([], context(0)) == []


def test_micro_batches_overlap_in_a_step(made):
    handler = doubling(made, 1, inference=2)
    handler.release.clear()
    done: list[Any] = []
    call = threading.Thread(target=lambda: done.append(handler.handle(rows([1, 2]), context(2))))
    call.start()
    # both micro-batches are in inference at once, on its two threads
    assert handler.inference_entered.acquire(timeout=10)
    assert handler.inference_entered.acquire(timeout=10)
    handler.release.set()
    call.join(10)
    assert done == [[{"value": 2}, {"value": 4}]]


def test_parallelism_resizes_each_step(made):
    handler = doubling(made, 1, preprocess=1, inference=2, postprocess=3)
    pipeline = handler.handle
    assert [len(pipeline.thread_groups[s]) for s in HANDLER_METHODS] == [1, 2, 3]
    pipeline.parallelism = {"preprocess": 2, "inference": 3, "postprocess": 4}
    assert [len(pipeline.thread_groups[s]) for s in HANDLER_METHODS] == [2, 3, 4]
    pipeline.parallelism = {"postprocess": 1}
    assert [len(pipeline.thread_groups[s]) for s in HANDLER_METHODS] == [2, 3, 1]
    assert pipeline.parallelism == {"preprocess": 2, "inference": 3, "postprocess": 1}
    assert handler.handle(rows([5, 6, 7]), context(3)) == [{"value": 10}, {"value": 12},
                                                           {"value": 14}]
    with pytest.raises(ValueError, match="unknown steps"):
        pipeline.parallelism = {"predict": 1}
    with pytest.raises(ValueError, match="at least one thread"):
        pipeline.parallelism = {"inference": 0}
    pipeline.shutdown()
    assert all(not group for group in pipeline.thread_groups.values())


def test_a_failing_step_fails_the_call_and_the_next_call_works(made):
    handler = doubling(made, 1, preprocess=2)
    with pytest.raises(PredictionException, match="a row that fails"):
        handler.handle(rows([1, "fail", 3]), context(3))
    assert handler.handle(rows([4]), context(1)) == [{"value": 8}]


def test_base_handler_steps_split_each_micro_batch_by_its_own_requests(made):
    """BaseHandler's postprocess splits outputs by the rows preprocess saw, per micro-batch,
    while other micro-batches go through the steps on other threads."""
    class Identity(BaseHandler):
        def __init__(self) -> None:
            super().__init__()
            self.model = lambda tensor: tensor * 1
            self.handle = MicroBatching(self, 2, {"preprocess": 2, "postprocess": 2})

    handler = Identity()
    made.append(handler.handle)
    bodies = [[1.0], [[2.0], [3.0]], [[4.0], [5.0], [6.0]], [7.0], [[8.0]]]
    expected = [[1.0], [[2.0], [3.0]], [[4.0], [5.0], [6.0]], [7.0], [[8.0]]]
    for _ in range(5):
        assert handler.handle(rows(bodies), context(len(bodies))) == expected


def test_the_ts_alias_resolves_micro_batching():
    install_ts_alias()
    module = importlib.import_module("ts.handler_utils.micro_batching")
    assert module.MicroBatching is MicroBatching
