"""Sequences in a real worker: the handler's context names the sequence headers LOAD gave;
sequence state stays in the worker (running_sum in batch mode, stateful_stream in continuous
mode, both written after TorchServe's examples/stateful)."""
from __future__ import annotations

import json
import os
from typing import Any

from protocol import messages
from tests.worker.test_continuous import CONTINUOUS, assert_idle, join, join_together, next_step


SEQUENCE_HEADERS = {"id": "x-seq", "start": "x-seq-start", "end": "x-seq-end"}


def sequence_request(request_id: str, value: int, start: bool = False) -> dict[str, Any]:
    headers = [["x-seq", "s1"]] + ([["x-seq-start", "true"]] if start else [])
    return messages.request(request_id, headers,
                            [messages.parameter("body", "text/plain", str(value).encode())])


def test_stateful_stream_sequence_with_configured_headers(loaded):
    worker = loaded("stateful_stream", batch_size=4, sequence_headers=SEQUENCE_HEADERS,
                    yaml_config={"handler": {"cache": {"capacity": 4}}}, **CONTINUOUS)

    def answers(step: dict[str, Any]) -> list[tuple[Any, ...]]:
        # (a request's parts after its first go bare: no headers)
        return [(r["id"], json.loads(r["body"]), r.get("more", False),
                 dict(r.get("headers") or [])) for r in step["responses"]]

    seq = {"x-seq": "s1"}
    join(worker, 1, [sequence_request("open", 2, start=True)])
    assert answers(next_step(worker)) == [("open", 2, False, seq)]
    join(worker, 2, [sequence_request("odd", 3)])   # streams: ten parts, then its answer
    steps = [next_step(worker) for _ in range(11)]
    assert [a for s in steps for a in answers(s)] == (
        [("odd", 5, True, seq)] + [("odd", 5, True, {})] * 9 + [("odd", 5, False, seq)])
    join(worker, 3, [sequence_request("even", 4)])
    assert answers(next_step(worker)) == [("even", 9, False, seq)]
    # A -1 that joins beside a stream cancels it: both answered at once.
    join_together(worker, messages.join(4, [sequence_request("odd2", 1)], []),
                  messages.join(5, [sequence_request("cancel", -1)], []))
    assert answers(next_step(worker)) == [("odd2", 10, False, seq), ("cancel", -1, False, seq)]
    join(worker, 6, [sequence_request("close", 0)])
    assert answers(next_step(worker)) == [("close", 10, False, {**seq, "x-seq-end": "s1"})]
    assert_idle(worker)


def test_running_sums_per_sequence_forget_the_least_recently_used(loaded):
    worker = loaded("running_sum", batch_size=4, sequence_headers=SEQUENCE_HEADERS,
                    yaml_config={"handler": {"cache": {"capacity": 2}}})

    def sums(*requests: tuple[str, str, int]) -> list[tuple[int, str]]:
        _, result = worker.predict([
            messages.request(request_id, [["x-seq", sequence]],
                             [messages.parameter("body", "application/json",
                                                 json.dumps(value).encode())])
            for request_id, sequence, value in requests])
        assert all(dict(r["headers"])["x-worker-pid"] == str(worker.pid)
                   for r in result["responses"])
        return [json.loads(r["body"]) for r in result["responses"]]

    assert sums(("r1", "a", 1), ("r2", "b", 10)) == [1, 10]
    assert sums(("r3", "a", 2), ("r4", "b", 20), ("r5", "a", 3)) == [3, 30, 6]
    # Three sequences, room for two: "b", the least recently used, is forgotten.
    assert sums(("r6", "c", 100)) == [100]
    assert sums(("r7", "a", 1), ("r8", "b", 1)) == [7, 1]
    assert worker.pid != os.getpid()
