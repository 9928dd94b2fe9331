"""Async mode in a real worker: PREDICTs run at once on the handler's event loop, RESULTs come
back as batches finish; and awaitable results in batch mode."""
from __future__ import annotations

import json
import time
from typing import Any

from protocol import messages
from tests.worker.harness import WorkerHandle, json_request, wait_gone
from worker.exits import EXIT_OK

ASYNC = {"serving": messages.MODE_ASYNC}
# Eight batches sleeping 0.5 s each: 4 s one after another, about 0.5 s at once. The bound is
# far above "at once" on a loaded machine and far below "one after another".
BATCHES, SLEEP, BOUND = 8, 0.5, 3.0


def sleep_request(request_id: str, seconds: float, **extra: Any) -> dict[str, Any]:
    return json_request(request_id, {"sleep": seconds, **extra}, headers=[["x-tag", request_id]])


def results(worker: WorkerHandle, count: int) -> list[dict[str, Any]]:
    return [worker.peer.expect(messages.RESULT) for _ in range(count)]


def answer(response: dict[str, Any]) -> tuple[str, Any, dict[str, str]]:
    assert response["status"] == 200 and not response["error"], response
    return response["id"], json.loads(response["body"]), dict(response["headers"])


def test_batches_run_at_once_each_with_its_own_context(loaded):
    worker = loaded("async_sleep", **ASYNC)
    started = time.monotonic()
    sent = {worker.send_batch([sleep_request(f"r{n}", SLEEP)]): f"r{n}" for n in range(BATCHES)}
    answered = results(worker, BATCHES)
    assert time.monotonic() - started < BOUND
    assert sorted(r["batch_id"] for r in answered) == sorted(sent)
    # Each batch's PredictionTime, recorded in the batch's own task (a RESULT carries the
    # records pending when it leaves), at the level of a batch, not of an error.
    timings = [m for r in answered for m in r.get("metrics", []) if m["name"] == "PredictionTime"]
    assert len(timings) == BATCHES
    assert all(["Level", "Model"] in m["dimensions"] for m in timings)
    for result in answered:
        [response] = result["responses"]
        request_id = sent[result["batch_id"]]
        assert answer(response) == (request_id, {"slept": SLEEP, "id": request_id},
                                    {"x-tag": request_id})


def test_results_come_back_as_batches_finish_and_shutdown_cancels_the_rest(loaded, zygote):
    worker = loaded("async_sleep", **ASYNC)
    worker.send_batch([sleep_request("slow", 60)])
    quick = worker.send_batch([sleep_request("quick", 0)])
    [result] = results(worker, 1)
    assert result["batch_id"] == quick
    # A PING while a batch runs: the reader thread answers it.
    worker.peer.send(messages.ping(5))
    assert worker.peer.expect(messages.PONG)["seq"] == 5
    assert worker.describe()["ok"] is True
    worker.peer.send(messages.shutdown())   # the 60 s batch is cancelled, not waited for
    assert zygote.wait_exit(worker.pid, 10)["returncode"] == EXIT_OK


def test_streamed_parts_carry_their_batch_id(loaded):
    worker = loaded("async_sleep", **ASYNC)
    first = worker.send_batch([sleep_request("a", 0.2, part=True)])
    second = worker.send_batch([sleep_request("b", 0, part=True)])
    frames = [worker.peer.recv() for _ in range(4)]
    parts = {f["batch_id"]: f["response"] for f in frames if f["kind"] == messages.STREAM}
    assert {b: answer(p)[:2] for b, p in parts.items()} == {
        first: ("a", {"part": "a"}), second: ("b", {"part": "b"})}
    finals = [f["batch_id"] for f in frames if f["kind"] == messages.RESULT]
    assert sorted(finals) == sorted([first, second])


def test_a_failing_batch_fails_alone(loaded):
    worker = loaded("fail_plain", **ASYNC)
    _, result = worker.predict([json_request("x", {}), json_request("y", {})])
    assert [(r["id"], r["status"], r["reason"], r["error"]) for r in result["responses"]] == [
        ("x", 503, "Prediction failed", True), ("y", 503, "Prediction failed", True)]
    _, result = worker.predict([])
    assert result["responses"] == []


def test_a_plain_handler_serves_in_async_mode(loaded):
    worker = loaded("noop", **ASYNC)
    _, result = worker.predict([json_request("n", {})])
    assert answer(result["responses"][0])[:2] == ("n", {"ok": 1})


def test_eof_ends_an_async_worker(loaded):
    worker = loaded("async_sleep", mode="exec", **ASYNC)
    worker.send_batch([sleep_request("slow", 60)])
    worker.peer.sock.close()
    assert wait_gone(worker.pid, 10)
    assert worker.process is not None and worker.process.wait(5) == EXIT_OK


def test_batch_mode_awaits_an_async_handler(loaded):
    worker = loaded("async_sleep", batch_size=2)
    _, result = worker.predict([sleep_request("a", 0.01), sleep_request("b", 0)])
    assert [answer(r) for r in result["responses"]] == [
        ("a", {"slept": 0.01, "id": "a"}, {"x-tag": "a"}),
        ("b", {"slept": 0.01, "id": "b"}, {"x-tag": "b"})]
