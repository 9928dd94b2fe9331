"""Inference API through the real daemon and real workers (SPEC 2): request bodies and headers,
responses as the handler set them, explanations, KServe v1, routing and keep-alive latency.
Batching, streaming, handler errors and lookups are in test_inference.py. The daemon and the probe
handler come from tests/support/inference.py (this module gets its own daemon)."""
from __future__ import annotations

import http.client
import statistics
import time

import requests

from tests.support import inference
from tests.support.inference import MAX_REQUEST, _error

# This module's daemon, and the probe model registered on it.
daemon, probe = inference.daemon, inference.probe


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


def test_binary_data_sent_as_a_urlencoded_form_is_a_400_saying_how_to_send_it(daemon, probe):
    """curl --data-binary @image.jpg sends application/x-www-form-urlencoded: bytes with more
    than 1000 '&' are refused as a form, with how to send them instead."""
    r = daemon.infer("POST", f"/predictions/{probe}", data=b"a&" * 1500,
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert _error(r) == {"code": 400, "type": "BadRequestException", "message":
                         "Too many fields. Maximum number of fields is 1000. The body was read "
                         "as application/x-www-form-urlencoded form fields, the content type "
                         "curl's -d and --data-binary send: send other data with -T, or with "
                         "-H 'Content-Type: application/octet-stream'."}
    raw = daemon.infer("POST", f"/predictions/{probe}", data=b"a&" * 1500,
                       headers={"Content-Type": "application/octet-stream"})
    assert _params(raw) == {"body": {"type": "bytes", "hex": (b"a&" * 1500).hex()}}


def test_every_request_header_reaches_the_handler(daemon, probe):
    sent = {"X-Test": "one", "X-Other-Header": "two, three", "Authorization": "Bearer abc",
            "User-Agent": "torchd-test/1"}
    r = daemon.infer("POST", f"/predictions/{probe}", data=b"x", headers=sent)
    assert r.status_code == 200
    seen = {k.lower(): v for k, v in r.json()["headers"].items()}
    for name, value in sent.items():
        assert seen[name.lower()] == value
    assert seen["content-length"] == "1" and "host" in seen
    # and TorchServe's own (handlePredictions), after the client's
    assert seen["explain"] == "False" and seen["url_path"] == ""


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


def test_request_head_over_64_kib_is_431_and_never_reaches_a_worker(daemon, probe):
    path = f"/predictions/{probe}"
    fits = daemon.infer("POST", path, data=b"x", headers={"X-Big": "h" * 60_000})
    assert fits.status_code == 200 and "h" * 60_000 in fits.text   # the handler saw it
    r = daemon.infer("POST", path, data=b"x", headers={"X-Big": "h" * 70_000})
    assert r.status_code == 431 and _error(r)["code"] == 431
    assert daemon.infer("POST", path, data=b"x").status_code == 200   # still serving


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
    """The prediction routes are reached past starlette's router (daemon/http/predict.py): PUT,
    GET (TorchServe routes any method to /predictions and /explanations) and a trailing slash work
    as on every path, a wrong method is TorchServe's 405."""
    for method, path in (("PUT", f"/predictions/{probe}"), ("POST", f"/predictions/{probe}/"),
                         ("POST", f"/predictions/{probe}/1.0/"), ("GET", f"/predictions/{probe}"),
                         ("PUT", f"/explanations/{probe}")):
        r = daemon.infer(method, path, json={"x": 1})
        assert r.status_code == 200, (method, path, r.text)
        assert r.json()["request_id"] == r.headers["x-request-id"]
    for method, path in (("TRACE", f"/predictions/{probe}"),
                         ("TRACE", f"/explanations/{probe}/1.0/x"),
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
