"""Continuous batching in a real worker: JOIN frames in, one STEP frame per step out.

Steps take microseconds, so no test waits for one: a request that must still be running while
the test acts has a k far beyond anything the test reads (it leaves by cancel, or by failing),
and frames sent in one write arrive together (they are applied before the same step).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from protocol import messages
from protocol.frames import encode_frame
from tests.worker.harness import WorkerHandle, json_request
from worker.exits import EXIT_FAILED
from worker.runtime.context import Context
from worker.stepping import Running, StepLoop, goes_on

CONTINUOUS = {"serving": messages.MODE_CONTINUOUS}
ENDLESS = 10 ** 9   # steps of a request that stays until the test removes it


def steps_request(request_id: str, k: int, tag: str = "", **extra: Any) -> dict[str, Any]:
    return json_request(request_id, {"k": k, "tag": tag or request_id, **extra})


def join(worker: WorkerHandle, batch_id: int, requests: list[dict[str, Any]],
         cancel: list[str] | None = None) -> None:
    worker.peer.send(messages.join(batch_id, requests, cancel or []))


def join_together(worker: WorkerHandle, *frames: dict[str, Any]) -> None:
    """Several frames in one write: the idle worker reads them together."""
    worker.peer.sock.sendall(b"".join(encode_frame(f) for f in frames))


def next_step(worker: WorkerHandle) -> dict[str, Any]:
    """The next STEP, acknowledged as the daemon does (an empty JOIN): a worker runs at most
    STEP_WINDOW steps ahead of the acknowledgements."""
    step = worker.peer.expect(messages.STEP)
    worker.peer.send(messages.join(step["batch_id"], [], [], acks=1))
    return step


def steps_until(worker: WorkerHandle, done: Callable[[dict[str, Any]], bool],
                limit: int = 100_000) -> list[dict[str, Any]]:
    """STEP frames up to and including the first that ``done`` accepts."""
    steps = []
    for _ in range(limit):
        steps.append(next_step(worker))
        if done(steps[-1]):
            return steps
    raise AssertionError(f"no such step among {limit}")


def ids(step: dict[str, Any]) -> list[str]:
    return [r["id"] for r in step["responses"]]


def part(response: dict[str, Any]) -> tuple[Any, ...]:
    """(id, body, more, x-step-batch) of a successful response; a request's later parts go
    bare (id, body, more: the daemon has its status and headers), so they have no header."""
    if set(response) == {"id", "body", "more"}:
        return response["id"], json.loads(response["body"]), True, None
    assert response["status"] == 200 and not response["error"], response
    headers = dict(response["headers"])
    return (response["id"], json.loads(response["body"]), response.get("more", False),
            headers.get("x-step-batch"))


def assert_idle(worker: WorkerHandle) -> None:
    """Nothing runs: the next frame answers a DESCRIBE, no STEP comes before it."""
    worker.peer.send(messages.describe())
    assert worker.peer.expect(messages.DESCRIBED)["ok"] is True


@pytest.fixture
def stepper(loaded) -> WorkerHandle:
    return loaded("steps", batch_size=8, **CONTINUOUS)


def test_requests_step_until_their_criteria_stop_them(stepper):
    join(stepper, 7, [steps_request("a", 3), steps_request("b", 5)])
    steps = [next_step(stepper) for _ in range(5)]
    assert [s["batch_id"] for s in steps] == [7] * 5
    assert [[part(r) for r in s["responses"]] for s in steps] == [
        [("a", {"tag": "a", "step": 1}, True, "2"), ("b", {"tag": "b", "step": 1}, True, "2")],
        [("a", {"tag": "a", "step": 2}, True, None), ("b", {"tag": "b", "step": 2}, True, None)],
        [("a", {"tag": "a", "step": 3}, False, "2"), ("b", {"tag": "b", "step": 3}, True, None)],
        [("b", {"tag": "b", "step": 4}, True, None)],
        [("b", {"tag": "b", "step": 5}, False, "1")],
    ]
    assert all("more" not in r for r in steps[2]["responses"][:1] + steps[4]["responses"])
    assert_idle(stepper)
    # The worker serves again after its running batch emptied.
    join(stepper, 8, [steps_request("c", 1)])
    assert [part(r) for r in next_step(stepper)["responses"]] == [
        ("c", {"tag": "c", "step": 1}, False, "1")]


def test_a_join_waits_for_the_next_step_and_a_cancel_leaves_at_it(stepper):
    join(stepper, 1, [steps_request("long", ENDLESS)])
    first = next_step(stepper)
    assert [part(r) for r in first["responses"]] == [
        ("long", {"tag": "long", "step": 1}, True, "1")]
    join(stepper, 2, [steps_request("b", 2)])   # while "long" steps on
    steps = steps_until(stepper, lambda s: "b" in ids(s) and "more" not in s["responses"][-1])
    joined = [i for i, s in enumerate(steps) if "b" in ids(s)]
    assert len(joined) == 2 and joined[1] == joined[0] + 1   # two steps, in a row
    assert all(ids(s) == ["long"] and s["batch_id"] == 1 for s in steps[:joined[0]])
    for step, number in zip(steps[joined[0]:], (1, 2)):
        assert step["batch_id"] == 2
        long, b = (part(r) for r in step["responses"])
        assert long[2:] == (True, None)   # a bare part: long's first went long ago
        assert b == ("b", {"tag": "b", "step": number}, number == 1, "2")
    # "long" steps on alone, with steps numbered on from where it was
    numbers = [json.loads(s["responses"][0]["body"])["step"] for s in [first] + steps]
    assert numbers == list(range(1, len(numbers) + 1))
    join(stepper, 3, [], cancel=["long"])
    join(stepper, 4, [steps_request("c", 1)])
    steps = steps_until(stepper, lambda s: "c" in ids(s))
    assert all(ids(s) == ["long"] for s in steps[:-1])   # steps run before the cancel came
    assert steps[-1]["batch_id"] == 4
    assert [part(r) for r in steps[-1]["responses"]] == [
        ("c", {"tag": "c", "step": 1}, False, "1")]
    assert_idle(stepper)


def test_a_cancel_that_comes_with_its_join_removes_it_before_it_runs(stepper):
    join_together(stepper, messages.join(1, [steps_request("gone", 2)], []),
                  messages.join(2, [steps_request("kept", 1)], ["gone", "never-joined"]))
    step = next_step(stepper)
    assert step["batch_id"] == 2
    assert [part(r) for r in step["responses"]] == [("kept", {"tag": "kept", "step": 1},
                                                     False, "1")]
    assert_idle(stepper)


def test_a_handler_error_fails_the_whole_running_batch(stepper):
    join(stepper, 1, [steps_request("long", ENDLESS)])
    next_step(stepper)
    join(stepper, 2, [steps_request("bad", 3, fail=True)])
    failed = steps_until(stepper, lambda s: "bad" in ids(s))[-1]
    assert [(r["id"], r["status"], r["reason"], r["error"], r.get("more"))
            for r in failed["responses"]] == [("long", 503, "Prediction failed", True, None),
                                              ("bad", 503, "Prediction failed", True, None)]
    assert_idle(stepper)   # the running batch is empty: nothing steps on
    join(stepper, 3, [steps_request("next", 1)])
    assert [part(r) for r in next_step(stepper)["responses"]] == [
        ("next", {"tag": "next", "step": 1}, False, "1")]


def test_streamed_parts_carry_the_running_batch_id(loaded):
    worker = loaded("stream", batch_size=2, **CONTINUOUS)
    join(worker, 5, [json_request("a", {}), json_request("b", {})])
    frames = [worker.peer.recv() for _ in range(7)]
    assert [(f["kind"], f["batch_id"]) for f in frames] == (
        [(messages.STREAM, 5)] * 6 + [(messages.STEP, 5)])
    assert [f["response"]["body"] for f in frames[:6]] == [
        f"part {n}".encode() for n in (0, 0, 1, 1, 2, 2)]
    # No stopping criteria: every request is done after its step.
    assert [(r["id"], r["body"], r.get("more")) for r in frames[6]["responses"]] == [
        ("a", b"final", None), ("b", b"final", None)]


def test_a_predict_frame_gets_errors_not_silence(stepper):
    _, result = stepper.predict([steps_request("p", 1)])
    [response] = result["responses"]
    assert (response["id"], response["status"], response["error"]) == ("p", 500, True)
    assert "continuous mode" in response["reason"]


def test_a_join_in_batch_mode_gets_errors_not_silence(loaded):
    worker = loaded("steps", batch_size=8)
    join(worker, 3, [], cancel=["nobody"])   # nothing to answer
    join(worker, 4, [steps_request("j", 1)])
    step = next_step(worker)
    assert step["batch_id"] == 4
    assert [(r["id"], r["status"], r["error"]) for r in step["responses"]] == [("j", 500, True)]
    assert "batch mode" in step["responses"][0]["reason"]


def test_an_unknown_mode_fails_the_load(spawn, store):
    worker = spawn("exec")
    answer = worker.load(store.model_dir("noop"), serving="bursty")
    assert answer["ok"] is False and "'bursty'" in answer["error"]
    assert worker.process.wait(10) == EXIT_FAILED


class _Criteria:
    def __init__(self, verdict: Any) -> None:
        self.verdict = verdict

    def __call__(self, value: Any) -> Any:
        if isinstance(self.verdict, Exception):
            raise self.verdict
        return self.verdict


@pytest.mark.parametrize(("criteria", "expected"), [
    (None, False), ([], False), ([None], False), ({}, False),
    ([_Criteria(False)], True), ([_Criteria(0)], True),
    ([_Criteria(True)], False), ([_Criteria(None)], False),
])
def test_goes_on(criteria, expected):
    assert goes_on(criteria, 0, "value") is expected


def test_a_raising_criteria_fails_its_request_only():
    context = Context("m", "/tmp", {}, 2, None, "test")
    context.begin_batch(["ok", "bad"], [{}, {}])
    context.stopping_criteria = [_Criteria(False), _Criteria(RuntimeError("boom"))]
    loop = StepLoop(None, None, None, lambda message: None)
    good, bad = (loop._answer(context, idx, Running(request_id, {}, None), "x")
                 for idx, request_id in enumerate(["ok", "bad"]))
    assert (good["status"], good["body"], good["more"]) == (200, b"x", True)
    assert (bad["status"], bad["reason"], bad["error"]) == (503, "Prediction failed", True)
    assert "more" not in bad


def test_the_worker_runs_at_most_step_window_steps_ahead_of_the_daemon(stepper):
    join(stepper, 1, [steps_request("long", ENDLESS)])
    unread = [stepper.peer.expect(messages.STEP) for _ in range(messages.STEP_WINDOW)]
    assert [json.loads(s["responses"][0]["body"])["step"] for s in unread] == [1, 2]
    stepper.peer.send(messages.describe())   # no third STEP comes before its answer
    assert stepper.peer.expect(messages.DESCRIBED)["ok"] is True
    stepper.peer.send(messages.join(1, [], [], acks=1))
    step = stepper.peer.expect(messages.STEP)
    assert json.loads(step["responses"][0]["body"])["step"] == 3
    join(stepper, 2, [], cancel=["long"])


def test_a_part_after_the_first_goes_bare_unless_its_status_is_not_200():
    context = Context("m", "/tmp", {}, 2, None, "test")
    context.begin_batch(["spoke", "failing"], [{}, {}])
    context.stopping_criteria = [_Criteria(False), _Criteria(False)]
    context.set_response_status(429, "Slow down", 1)
    loop = StepLoop(None, None, None, lambda message: None)
    bare, full = (loop._answer(context, idx, Running(request_id, {}, None, spoke=True), "x")
                  for idx, request_id in enumerate(["spoke", "failing"]))
    assert bare == messages.bare_part("spoke", b"x") == {"id": "spoke", "body": b"x",
                                                         "more": True}
    assert (full["status"], full["reason"], full["more"]) == (429, "Slow down", True)
