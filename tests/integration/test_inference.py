"""Inference API through the real daemon and real workers (SPEC 2): batching, streaming, handler
errors, request bodies and headers, responses as the handler set them, KServe v1, lookups, and
keep-alive latency. Faults (timeouts, crashes, backpressure, disconnects, health) are in
test_inference_faults.py; the Open Inference Protocol v2 in test_v2.py."""
from __future__ import annotations

import concurrent.futures
import http.client
import json
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.support.archives import ARCHIVER, copy_store
from tests.support.daemon import Daemon

MAX_REQUEST = 2 * 1024 * 1024

# A handler that reports everything it was given, so tests see the worker's side of a request.
PROBE = '''
import json
import time

from ts.handler_utils.utils import send_intermediate_predict_response


def _show(value):
    if isinstance(value, (bytes, bytearray)):
        return {"type": "bytes", "hex": bytes(value).hex()}
    return {"type": type(value).__name__, "value": value}


def handle(data, context):
    if data is None:
        return None
    gap = context.get_request_header(0, "x-stream-gap")
    if gap is not None:
        for part in range(3):
            send_intermediate_predict_response([f"part {part}" for _ in data],
                                               context.request_ids, "Partly Done", 200,
                                               context)
            time.sleep(float(gap))
        if context.get_request_header(0, "x-stream-fail"):
            raise ValueError("failed after streaming began")
    return [{"params": {name: _show(value) for name, value in row.items()},
             "headers": context.get_all_request_header(idx),
             "request_id": context.get_request_id(idx),
             "batch_size": len(data),
             "version": context.manifest["model"]["modelVersion"]}
            for idx, row in enumerate(data)]
'''


def build_probe(out: Path, work: Path) -> Path:
    """probe.mar: the PROBE handler archived by the real torch-model-archiver."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "probe.py").write_text(PROBE)
    subprocess.run([str(ARCHIVER), "--model-name", "probe", "--version", "1.0",
                    "--handler", str(work / "probe.py"), "--export-path", str(out), "--force"],
                   check=True, capture_output=True, timeout=120)
    return out / "probe.mar"


@pytest.fixture(scope="module")
def daemon(archive_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One daemon for this module; each test registers what it needs under its own name."""
    workdir = tmp_path_factory.mktemp("inference")
    store = copy_store(archive_dir, workdir / "store")
    build_probe(store, workdir / "probe-src")
    d = Daemon(workdir, store, {"max_request_size": MAX_REQUEST})
    d.start()
    yield d
    d.cleanup()


@pytest.fixture(scope="module")
def probe(daemon: Daemon):
    r = daemon.register("probe.mar", initial_workers=1)
    assert r.status_code == 200, r.text
    yield "probe"
    daemon.unregister("probe")


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

def _error(response: requests.Response) -> dict:
    assert response.headers["content-type"] == "application/json"
    return response.json()


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


# ---- request bodies and headers -----------------------------------------------------------

def _params(response: requests.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()["params"]


def test_raw_bytes_json_and_text_bodies(daemon, probe):
    path = f"/predictions/{probe}"
    raw = daemon.infer("POST", path, data=b"\x00\xffraw",
                       headers={"Content-Type": "application/octet-stream"})
    assert _params(raw) == {"body": {"type": "bytes", "hex": b"\x00\xffraw".hex()}}
    untyped = daemon.infer("POST", path, data=b"\x01\x02")
    assert _params(untyped) == {"body": {"type": "bytes", "hex": "0102"}}
    doc = {"k": [1, 2], "s": "é"}
    assert _params(daemon.infer("POST", path, json=doc)) == {"body": {"type": "dict",
                                                                      "value": doc}}
    text = daemon.infer("POST", path, data="héllo".encode(),
                        headers={"Content-Type": "text/plain; charset=utf-8"})
    assert _params(text) == {"body": {"type": "str", "value": "héllo"}}
    broken = daemon.infer("POST", path, data=b"{not json",
                          headers={"Content-Type": "application/json"})
    assert _params(broken) == {"body": {"type": "bytes", "hex": b"{not json".hex()}}
    empty = daemon.infer("POST", path)
    assert _params(empty) == {"body": {"type": "bytes", "hex": ""}}


def test_multipart_form_gives_one_parameter_per_field(daemon, probe):
    files = {"data": ("input.bin", b"\x00\x01\x02", "application/octet-stream"),
             "doc": ("doc.json", b'{"a": 1}', "application/json")}
    r = daemon.infer("POST", f"/predictions/{probe}", files=files, data={"field": "value"})
    assert _params(r) == {"field": {"type": "bytes", "hex": b"value".hex()},
                          "data": {"type": "bytes", "hex": "000102"},
                          "doc": {"type": "dict", "value": {"a": 1}}}


def test_urlencoded_form_gives_one_parameter_per_field(daemon, probe):
    r = daemon.infer("POST", f"/predictions/{probe}", data={"a": "1", "b": "two words"})
    assert _params(r) == {"a": {"type": "bytes", "hex": b"1".hex()},
                          "b": {"type": "bytes", "hex": b"two words".hex()}}


def test_form_fields_may_be_larger_than_a_megabyte(daemon, probe):
    big = "v" * 1_500_000       # under max_request_size, over starlette's default part limit
    for kwargs in ({"data": {"f": big}}, {"files": {"f": (None, big)}}):
        params = _params(daemon.infer("POST", f"/predictions/{probe}", **kwargs))
        assert params == {"f": {"type": "bytes", "hex": big.encode().hex()}}


def test_malformed_multipart_is_400(daemon, probe):
    r = daemon.infer("POST", f"/predictions/{probe}", data=b"x",
                     headers={"Content-Type": "multipart/form-data"})
    assert r.status_code == 400
    assert _error(r) == {"code": 400, "type": "BadRequestException",
                         "message": "Missing boundary in multipart."}


def test_every_request_header_reaches_the_handler(daemon, probe):
    sent = {"X-Test": "one", "X-Other-Header": "two, three", "Authorization": "Bearer abc",
            "User-Agent": "torchd-test/1"}
    r = daemon.infer("POST", f"/predictions/{probe}", data=b"x", headers=sent)
    assert r.status_code == 200
    seen = {k.lower(): v for k, v in r.json()["headers"].items()}
    for name, value in sent.items():
        assert seen[name.lower()] == value
    assert seen["content-length"] == "1" and "host" in seen and "explain" not in seen


def test_handler_status_reason_content_type_and_headers(daemon):
    r = daemon.register("status.mar", model_name="status201", initial_workers=1)
    assert r.status_code == 200, r.text
    try:
        answer = daemon.infer("POST", "/predictions/status201", data=b"x")
        assert answer.status_code == 201 and answer.reason == "Created"
        assert answer.headers["content-type"] == "text/plain"
        assert answer.headers["x-custom"] == "yes" and answer.text == "made"
    finally:
        daemon.unregister("status201")


def test_no_content_type_unless_the_handler_sets_one(daemon, probe):
    r = daemon.infer("POST", f"/predictions/{probe}", data=b"x")
    assert r.status_code == 200 and r.reason == "OK"
    assert "content-type" not in r.headers
    assert r.json()["request_id"] == r.headers["x-request-id"]


def test_body_over_max_request_size_is_413(daemon, probe):
    path = f"/predictions/{probe}"
    assert daemon.infer("POST", path, data=b"x" * MAX_REQUEST).status_code == 200
    r = daemon.infer("POST", path, data=b"x" * (MAX_REQUEST + 1))
    assert r.status_code == 413 and _error(r)["code"] == 413

    def chunks():   # no Content-Length: the limit applies while reading
        for _ in range(MAX_REQUEST // 65536 + 1):
            yield b"y" * 65536
    r = daemon.infer("POST", path, data=chunks())
    assert r.status_code == 413 and _error(r)["code"] == 413


# ---- explanations and KServe v1 -----------------------------------------------------------

def test_explanations_pass_explain_true(daemon, probe):
    for path in (f"/explanations/{probe}", f"/explanations/{probe}/1.0",
                 f"/v1/models/{probe}:explain"):
        r = daemon.infer("POST", path, json={"x": 1})
        assert r.status_code == 200, (path, r.text)
        body = r.json()
        assert body["headers"]["explain"] == "True", path
        assert body["params"] == {"body": {"type": "dict", "value": {"x": 1}}}


def test_kserve_v1_predict(daemon, probe):
    r = daemon.infer("POST", f"/v1/models/{probe}:predict", json={"instances": [[1, 2]]})
    assert r.status_code == 200
    body = r.json()
    assert body["params"] == {"body": {"type": "dict", "value": {"instances": [[1, 2]]}}}
    assert "explain" not in body["headers"]
    assert daemon.infer("POST", f"/v1/models/{probe}:nonsense", data=b"x").status_code == 404


def test_prediction_paths_route_like_every_other_path(daemon, probe):
    """The prediction routes are reached past starlette's router (daemon/http/predict.py): PUT and a
    trailing slash work as on every path, a wrong method is TorchServe's 405."""
    for method, path in (("PUT", f"/predictions/{probe}"), ("POST", f"/predictions/{probe}/"),
                         ("POST", f"/predictions/{probe}/1.0/")):
        r = daemon.infer(method, path, json={"x": 1})
        assert r.status_code == 200, (method, path, r.text)
        assert r.json()["request_id"] == r.headers["x-request-id"]
    for method, path in (("GET", f"/predictions/{probe}"), ("PUT", f"/explanations/{probe}"),
                         ("GET", f"/v1/models/{probe}:predict"),
                         ("DELETE", f"/v2/models/{probe}/infer")):
        r = daemon.infer(method, path)
        assert r.status_code == 405, (method, path, r.text)
        assert r.json() == {"code": 405, "type": "MethodNotAllowedException", "message":
                            "Requested method is not allowed, please refer to API document."}


# ---- latency ------------------------------------------------------------------------------

def test_one_keep_alive_connection_answers_in_milliseconds(daemon, probe):
    """TCP_NODELAY on the inference listener: without it every keep-alive response's body
    waits ~40 ms for the client's delayed ACK (the head and body leave in two writes)."""
    conn = http.client.HTTPConnection("127.0.0.1", daemon.ports["inference"], timeout=30)
    try:
        conn.request("GET", "/ping")
        conn.getresponse().read()
        sock, times = conn.sock, []
        for _ in range(40):
            started = time.perf_counter()
            conn.request("POST", f"/predictions/{probe}", body=b"x")
            response = conn.getresponse()
            response.read()
            times.append(time.perf_counter() - started)
            assert response.status == 200 and conn.sock is sock   # one connection throughout
    finally:
        conn.close()
    assert statistics.median(times) < 0.02, times
