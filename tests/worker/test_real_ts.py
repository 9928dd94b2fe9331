"""Streaming with TorchServe's own ``ts`` package, in-process: its
send_intermediate_predict_response writes TorchServe's wire format to ``context.cl_socket``, and
the worker sends the same parts as with torchd's own function."""
from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from protocol import messages
from worker.runtime import streaming
from worker.runtime.context import Context
from worker.service import ModelService
from tests.support.real_ts import install_real_ts, real_ts_imported


@pytest.fixture(scope="session")
def real_ts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_real_ts(tmp_path_factory.mktemp("real-ts"))


def streaming_handler(send: Callable[..., None]) -> Callable[[Any, Context], list[Any]]:
    """Two parts per request (text, then JSON with a content type), then a final value."""
    def handle(data: list[dict], context: Context) -> list[Any]:
        send([f"part {i}" for i in range(len(data))], context.request_ids,
             "Intermediate Prediction success", 200, context)
        for idx in range(len(data)):
            context.set_response_content_type(idx, "application/json")
        send([{"n": i, "items": [1, 2]} for i in range(len(data))], context.request_ids,
             "Intermediate Prediction success", 200, context)
        return ["final"] * len(data)
    return handle


def run(send: Callable[..., None]) -> tuple[list[dict], list[dict]]:
    """(parts, final responses) of one batch of two requests."""
    context = Context("m", "/tmp", {}, 2, None, "test")
    service = ModelService(streaming_handler(send), context)
    parts: list[dict] = []
    requests = [messages.request(rid, [], [messages.parameter("body", None, b"x")])
                for rid in ("r0", "r1")]
    final = service.run_batch(requests, parts.extend)
    return parts, final


def test_real_ts_streams_the_same_parts_as_torchd_s_own_function(real_ts):
    ours = run(streaming.send_intermediate_predict_response)
    with real_ts_imported(real_ts):
        import ts.handler_utils.utils as real_utils
        assert Path(real_utils.__file__).is_relative_to(real_ts)
        theirs = run(real_utils.send_intermediate_predict_response)
    parts, final = theirs
    assert [(p["id"], p["body"]) for p in parts] == [
        ("r0", b"part 0"), ("r1", b"part 1"),
        ("r0", b'{\n  "n": 0,\n  "items": [\n    1,\n    2\n  ]\n}'),
        ("r1", b'{\n  "n": 1,\n  "items": [\n    1,\n    2\n  ]\n}')]
    assert [p["content_type"] for p in parts] == [None, None] + ["application/json"] * 2
    assert {(p["status"], p["reason"]) for p in parts} == {
        (200, "Intermediate Prediction success")}
    # TorchServe's "more parts follow" header never reaches the parts or the final answer
    assert all(p["headers"] == [] for p in parts + final)
    assert theirs == ours


def encoded(code: int, message: str, *requests: tuple[str, bytes]) -> bytes:
    """A predict response in TorchServe's layout: the test's own spelling of it."""
    def text(value: str) -> bytes:
        return struct.pack("!i", len(value.encode())) + value.encode()
    out = struct.pack("!i", code) + text(message)
    for request_id, body in requests:
        out += text(request_id) + text("") + struct.pack("!i", 200) + text("")
        out += struct.pack("!i", 1) + text("ts_stream_next") + text("true")
        out += struct.pack("!i", len(body)) + body
    return out + struct.pack("!i", -1)


def test_decode_predict_response():
    data = encoded(200, "ok", ("a", b"one"), ("b", b""))
    assert streaming.decode_predict_response(data) == (200, "ok", {"a": b"one", "b": b""})
    for bad in (data[:-1], data + b"\0", data[:9]):
        with pytest.raises(ValueError):
            streaming.decode_predict_response(bad)


def test_cl_socket_sends_through_the_context_and_refuses_strangers():
    context = Context("m", "/tmp", {}, 2, None, "test")
    context.begin_batch(["a", "b"], [{}, {}])
    seen = []
    context.stream_writer = lambda *args: seen.append(args)
    context.set_response_header(1, "ts_stream_next", "true")
    context.cl_socket.sendall(encoded(200, "ok", ("b", b"two")))
    assert seen == [({1: b"two"}, {1: "b"}, "ok", 200)]
    assert context.get_response_headers(1) == {}
    with pytest.raises(ValueError, match="not in this batch"):
        context.cl_socket.sendall(encoded(200, "ok", ("c", b"x")))
