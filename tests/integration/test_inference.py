"""Inference API through the real daemon and real workers (SPEC 2): batching, streaming, handler
errors and lookups. Request bodies and headers, responses as the handler set them, KServe v1 and
keep-alive latency are in test_inference_requests.py; faults (timeouts, crashes, backpressure,
disconnects, health) in test_inference_faults.py; the Open Inference Protocol v2 in test_v2.py.
The daemon and the probe handler come from tests/support/inference.py (this module gets its own
daemon)."""
from __future__ import annotations

import concurrent.futures
import json
import socket
import threading
import time

import pytest
import requests

from tests.support import inference
from tests.support.daemon import Daemon
from tests.support.inference import _error

# This module's daemon, and the probe model registered on it.
daemon, probe = inference.daemon, inference.probe


def pid_of(d: Daemon, name: str) -> int:
    return d.wait_workers(name, 1)[0]["pid"]


def post_together(d: Daemon, path: str, bodies: list) -> list[requests.Response]:
    """POST each body from its own thread and connection, all released at the same moment."""
    barrier = threading.Barrier(len(bodies))
    url = d.url("inference", path)

    def post(body) -> requests.Response:
        with requests.Session() as session:
            session.get(d.url("inference", "/ping"), timeout=30)   # connected beforehand
            barrier.wait(timeout=30)
            return session.post(url, json=body, timeout=30)

    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(post, bodies))


# ---- batching -----------------------------------------------------------------------------

def test_four_concurrent_requests_are_one_batch(daemon):
    r = daemon.register("echo.mar", model_name="batched4", initial_workers=1, batch_size=4,
                        max_batch_delay=300)
    assert r.status_code == 200, r.text
    try:
        answers = post_together(daemon, "/predictions/batched4", [{"n": i} for i in range(4)])
        assert [a.status_code for a in answers] == [200] * 4
        bodies = [a.json() for a in answers]
        assert {b["batch_size"] for b in bodies} == {4}
        ids = {a.headers["x-request-id"] for a in answers}
        for answer, body in zip(answers, bodies):
            # every response went back to its own client, and the worker saw all four together
            assert body["request_id"] == answer.headers["x-request-id"]
            assert set(body["request_ids"].values()) == ids
            assert body["params"]["body"] == {"type": "dict", "value": {"n": bodies.index(body)}}
    finally:
        daemon.unregister("batched4")


def test_a_batch_of_bodies_near_max_request_size_reaches_the_worker(daemon):
    """Four bodies of almost max_request_size (2 MB here) make one PREDICT frame over the
    default 6.5 MB frame limit: LOAD tells the worker how big its batches may get, so the batch
    is served instead of ending the worker (and, re-dispatched, a second one)."""
    r = daemon.register("noop.mar", model_name="big_batch", initial_workers=1, batch_size=4,
                        max_batch_delay=1000)
    assert r.status_code == 200, r.text
    try:
        pid = pid_of(daemon, "big_batch")
        body = "v" * (inference.MAX_REQUEST - 1024)   # a JSON string just under the limit
        answers = post_together(daemon, "/predictions/big_batch", [body] * 4)
        assert [(a.status_code, a.json()) for a in answers] == [(200, {"ok": 1})] * 4
        assert pid_of(daemon, "big_batch") == pid
    finally:
        daemon.unregister("big_batch")


def test_a_lone_request_waits_max_batch_delay_then_runs_alone(daemon):
    r = daemon.register("echo.mar", model_name="batched_lone", initial_workers=1, batch_size=4,
                        max_batch_delay=300)
    assert r.status_code == 200, r.text
    try:
        started = time.monotonic()
        answer = daemon.infer("POST", "/predictions/batched_lone", json={"n": 0})
        elapsed = time.monotonic() - started
        assert answer.status_code == 200 and answer.json()["batch_size"] == 1
        assert 0.28 <= elapsed < 1.5, elapsed
    finally:
        daemon.unregister("batched_lone")


# ---- streaming ----------------------------------------------------------------------------

def read_chunked(port: int, path: str, body: bytes = b"{}", headers: dict | None = None,
                 timeout: float = 30) -> tuple[int, dict[str, str], list[tuple[float, bytes]]]:
    """POST over a raw socket and return (status, headers, [(arrival time, chunk)]) with the
    chunked framing as the server sent it."""
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close",
             "Content-Type: application/json", f"Content-Length: {len(body)}",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    reader = sock.makefile("rb")
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        status = int(reader.readline().split()[1])
        head: dict[str, str] = {}
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            head[name.strip().lower()] = value.strip()
        assert head.get("transfer-encoding") == "chunked", head
        chunks = []
        while True:
            size = int(reader.readline().split(b";")[0], 16)
            data = reader.read(size)
            reader.readline()
            if size == 0:
                return status, head, chunks
            chunks.append((time.monotonic(), data))
    finally:
        reader.close()
        sock.close()


def test_streamed_parts_are_separate_chunks_before_the_final_one(daemon):
    r = daemon.register("stream.mar", model_name="streamer", initial_workers=1)
    assert r.status_code == 200, r.text
    try:
        status, head, chunks = read_chunked(daemon.ports["inference"], "/predictions/streamer")
        assert status == 200 and "x-request-id" in head
        assert [c for _, c in chunks] == [b"part 0", b"part 1", b"part 2", b"final"]
    finally:
        daemon.unregister("streamer")


def test_streamed_parts_arrive_as_the_handler_sends_them(daemon, probe):
    started = time.monotonic()
    status, _, chunks = read_chunked(daemon.ports["inference"], f"/predictions/{probe}",
                                     headers={"X-Stream-Gap": "0.4"})
    assert status == 200
    assert [c for _, c in chunks[:3]] == [b"part 0", b"part 1", b"part 2"]
    assert len(chunks) == 4 and json.loads(chunks[3][1])["batch_size"] == 1
    times = [t - started for t, _ in chunks]
    # each part leaves when the handler sends it, not when the handler returns
    assert times[0] < times[3] - 0.8, times
    assert all(b - a > 0.15 for a, b in zip(times, times[1:])), times


def test_streaming_with_requests_iter_content(daemon, probe):
    with requests.post(daemon.url("inference", f"/predictions/{probe}"), data=b"x",
                       headers={"X-Stream-Gap": "0.2"}, stream=True, timeout=30) as r:
        assert r.status_code == 200 and r.reason == "OK"   # the standard phrase (see README)
        parts = list(r.iter_content(None))
    assert parts[:3] == [b"part 0", b"part 1", b"part 2"]
    assert json.loads(b"".join(parts[3:]))["request_id"] == r.headers["x-request-id"]


def test_a_stream_that_fails_after_it_began_is_cut_short(daemon, probe):
    with requests.post(daemon.url("inference", f"/predictions/{probe}"), data=b"x",
                       headers={"X-Stream-Gap": "0", "X-Stream-Fail": "1"}, stream=True,
                       timeout=30) as r:
        assert r.status_code == 200
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            list(r.iter_content(None))
    assert daemon.infer("POST", f"/predictions/{probe}", data=b"x").status_code == 200


# ---- handler errors -----------------------------------------------------------------------

@pytest.mark.parametrize("archive, cases", [
    ("fail513", [({}, 513, "bad thing")]),
    ("fail_plain", [({}, 503, "Prediction failed")]),
    ("oom", [({}, 507, "Out of resources")]),
    ("bad_output", [({"mode": "dict"}, 503, "Invalid model predict output"),
                    ({"mode": "short"}, 503, "number of batch response mismatched"),
                    ({"mode": "unserializable"}, 503, "Prediction failed")]),
])
def test_handler_errors_keep_the_worker(daemon, archive, cases):
    name = f"err_{archive}"
    r = daemon.register(f"{archive}.mar", model_name=name, initial_workers=1)
    assert r.status_code == 200, r.text
    try:
        pid = pid_of(daemon, name)
        for body, code, message in cases + cases:
            answer = daemon.infer("POST", f"/predictions/{name}", json=body)
            assert answer.status_code == code
            # TorchServe types every error a handler causes as InternalServerException
            assert _error(answer) == {"code": code, "type": "InternalServerException",
                                      "message": message}
        assert pid_of(daemon, name) == pid      # the same worker, still serving
    finally:
        daemon.unregister(name)


def test_prediction_exception_worker_then_answers(daemon):
    r = daemon.register("fail513.mar", model_name="err_then_ok", initial_workers=1)
    assert r.status_code == 200, r.text
    try:
        pid = pid_of(daemon, "err_then_ok")
        assert daemon.infer("POST", "/predictions/err_then_ok", json={}).status_code == 513
        ok = daemon.infer("POST", "/predictions/err_then_ok", json={"fail": False})
        assert ok.status_code == 200 and ok.text == "fine"
        assert pid_of(daemon, "err_then_ok") == pid
    finally:
        daemon.unregister("err_then_ok")


# ---- lookups ------------------------------------------------------------------------------

def test_unknown_model_and_version(daemon, probe):
    r = daemon.infer("POST", "/predictions/no_such_model", data=b"x")
    assert r.status_code == 404
    assert _error(r) == {"code": 404, "type": "ModelNotFoundException",
                         "message": "Model not found: no_such_model"}
    r = daemon.infer("POST", f"/predictions/{probe}/9.9", data=b"x")
    assert r.status_code == 404
    assert _error(r) == {"code": 404, "type": "ModelVersionNotFoundException",
                         "message": f"Model version: 9.9 does not exist for model: {probe}"}
    for path in ("/explanations/no_such_model", "/v1/models/no_such_model:predict"):
        assert daemon.infer("POST", path, data=b"x").json()["message"] == \
            "Model not found: no_such_model"
    assert daemon.infer("POST", f"/predictions/{probe}/1.0", data=b"x").status_code == 200


def test_no_workers_answers_torchserve_503(daemon):
    r = daemon.register("noop.mar", model_name="idle0", initial_workers=0)
    assert r.status_code == 200, r.text
    try:
        answer = daemon.infer("POST", "/predictions/idle0", data=b"x")
        assert answer.status_code == 503
        assert _error(answer) == {
            "code": 503, "type": "ServiceUnavailableException",
            "message": 'Model "idle0" has no worker to serve inference request. Please use '
                       'scale workers API to add workers.'}
    finally:
        daemon.unregister("idle0")
