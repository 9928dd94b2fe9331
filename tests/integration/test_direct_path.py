"""The inference listener's direct path (daemon/http/direct.py) through the real daemon, over raw
sockets: what HTTP/1.1 lets a client do that a `requests` call never does. Pipelined requests
(answered in order, a refusal among them), a body arriving in pieces or beyond uvicorn's 64 KiB
read pause, a chunked body over the limit, `Expect: 100-continue` (the ASGI path's case),
`Connection: close` and HTTP/1.0, and no reference cycles left by a request (the daemon's
python_gc_* metrics)."""
from __future__ import annotations

import json
import re
import socket
import time

import pytest
import requests

from tests.support import inference
from tests.support.archives import archive_source
from tests.support.inference import MAX_REQUEST

daemon, probe = inference.daemon, inference.probe

# Sets the response header its request asks for (X-Set-Name, X-Set-Value as hex) and the
# status (X-Set-Status): what a handler may get wrong.
SETTER = """
def handle(data, context):
    if data is None:
        return None
    for idx in range(len(data)):
        name = context.get_request_header(idx, "x-set-name")
        if name:
            value = bytes.fromhex(context.get_request_header(idx, "x-set-value")).decode()
            context.set_response_header(idx, name, value)
        status = context.get_request_header(idx, "x-set-status")
        if status:
            context.set_response_status(int(status), "", idx)
    return ["set" for _ in data]
"""


def connect(daemon) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", daemon.ports["inference"]), timeout=20)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def post(path: str, body: bytes = b"", extra: bytes = b"", version: bytes = b"1.1") -> bytes:
    return (b"POST %s HTTP/%s\r\nHost: t\r\nContent-Length: %d\r\n%s\r\n%s"
            % (path.encode(), version, len(body), extra, body))


class Reader:
    """Whole responses off one connection, framed by their Content-Length."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buffer = sock, b""

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._more()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self._more()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, body

    def closed(self) -> bool:
        return self.sock.recv(1) == b""

    def _more(self) -> None:
        data = self.sock.recv(65536)
        assert data, f"connection closed; got so far: {self.buffer[:200]!r}"
        self.buffer += data


def body_hex(body: bytes) -> str:
    return json.loads(body)["params"]["body"]["hex"]


def test_pipelined_requests_are_answered_in_order_with_a_refusal_among_them(daemon, probe):
    with connect(daemon) as sock:
        sock.sendall(post(f"/predictions/{probe}", b"one") + post("/predictions/nosuch", b"x")
                     + post(f"/predictions/{probe}/", b"three"))   # trailing slash: the same
        reader = Reader(sock)
        first, missing, third = reader.response(), reader.response(), reader.response()
        assert (first[0], body_hex(first[2])) == (200, b"one".hex())
        assert missing[0] == 404 and json.loads(missing[2])["type"] == "ModelNotFoundException"
        assert (third[0], body_hex(third[2])) == (200, b"three".hex())
        ids = {first[1]["x-request-id"], missing[1]["x-request-id"], third[1]["x-request-id"]}
        assert len(ids) == 3
        sock.sendall(post(f"/predictions/{probe}", b"again"))   # the connection serves on
        assert body_hex(reader.response()[2]) == b"again".hex()


def test_a_body_in_pieces_and_one_past_the_read_pause(daemon, probe):
    with connect(daemon) as sock:
        reader = Reader(sock)
        body = b"piece-by-piece"
        request = post(f"/predictions/{probe}", body)
        for start in range(0, len(request), 40):   # the head split too
            sock.sendall(request[start:start + 40])
            time.sleep(0.02)
        status, _, answer = reader.response()
        assert (status, body_hex(answer)) == (200, body.hex())
        big = bytes(range(256)) * 1200   # 300 KiB: uvicorn pauses reading past 64 KiB
        sock.sendall(post(f"/predictions/{probe}", big))
        status, _, answer = reader.response()
        assert (status, body_hex(answer)) == (200, big.hex())


def test_a_chunked_body_over_the_limit_is_413_and_the_connection_serves_on(daemon, probe):
    chunk = b"x" * (256 * 1024)
    with connect(daemon) as sock:
        sock.sendall(b"POST /predictions/%s HTTP/1.1\r\nHost: t\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" % probe.encode())
        for _ in range(MAX_REQUEST // len(chunk) + 2):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        sock.sendall(b"0\r\n\r\n")
        reader = Reader(sock)
        status, _, body = reader.response()
        assert status == 413
        assert json.loads(body)["message"] == (f"Request body exceeds max_request_size "
                                               f"({MAX_REQUEST} bytes)")
        sock.sendall(post(f"/predictions/{probe}", b"after"))
        status, _, body = reader.response()
        assert (status, body_hex(body)) == (200, b"after".hex())


def test_expect_100_continue_gets_its_interim_answer_first(daemon, probe):
    """curl sends this header for any body over 1 KiB, and waits for the 100 before sending it."""
    with connect(daemon) as sock:
        sock.sendall(b"POST /predictions/%s HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n" % probe.encode())
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            interim += sock.recv(1)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        status, _, body = Reader(sock).response()
        assert (status, body_hex(body)) == (200, b"hello".hex())


def test_connection_close_and_http_1_0_end_the_connection_after_the_answer(daemon, probe):
    close = b"Connection: close\r\n"
    for request, expected in ((post(f"/predictions/{probe}", b"a", close), 200),
                              (post(f"/predictions/{probe}", b"b", version=b"1.0"), 200),
                              (post("/predictions/nosuch", b"c", close), 404)):
        with connect(daemon) as sock:
            sock.sendall(request)
            reader = Reader(sock)
            status, headers, _ = reader.response()
            assert status == expected
            assert headers["connection"] == "close"
            assert reader.closed()


def gc_collected(daemon) -> float:
    text = requests.get(daemon.url("metrics", "/metrics"), timeout=10).text
    return sum(float(v) for v in re.findall(r"^python_gc_objects_collected_total\{[^}]*\} (\S+)",
                                            text, re.M))


def test_requests_leave_no_reference_cycles_for_the_collector(daemon, probe):
    """Every request was once a reference cycle (its cycle, its job, a timer's closure): about
    40 objects a request for the cyclic collector, 9% of the daemon's CPU under load."""
    before = gc_collected(daemon)
    with connect(daemon) as sock:
        reader = Reader(sock)
        for _ in range(1500):   # ~75 young-generation collections' worth of allocations
            sock.sendall(post(f"/predictions/{probe}", b"{}"))
            assert reader.response()[0] == 200
    collected = gc_collected(daemon) - before
    assert collected < 300, f"{collected:.0f} objects in reference cycles for 1500 requests"


@pytest.fixture(scope="module")
def setter(daemon, tmp_path_factory):
    archive_source(SETTER, "setter", daemon.model_store, tmp_path_factory.mktemp("setter"))
    r = daemon.register("setter.mar", initial_workers=1)
    assert r.status_code == 200, r.text
    yield "setter"
    daemon.unregister("setter")


def test_a_handler_header_that_would_split_the_response_is_a_500(daemon, setter):
    """On the direct path, and on the ASGI path (a form body) the same."""
    form = b"Content-Type: application/x-www-form-urlencoded\r\n"
    with connect(daemon) as sock:
        reader = Reader(sock)
        for value, extra in (("one\r\nX-Injected: yes", b""), ("two\nthree", b""),
                             ("one\r\nX-Injected: yes", form)):
            sock.sendall(post(f"/predictions/{setter}", b"a=1",
                              b"X-Set-Name: X-Bad\r\nX-Set-Value: %s\r\n%s"
                              % (value.encode().hex().encode(), extra)))
            status, headers, body = reader.response()
            assert status == 500 and "x-injected" not in headers and "x-bad" not in headers
            assert json.loads(body)["message"] == ("The handler set an invalid response "
                                                   "header: 'x-bad'")
        for extra in (b"", form):   # a status no HTTP response can have
            sock.sendall(post(f"/predictions/{setter}", b"a=1", b"X-Set-Status: 42\r\n" + extra))
            status, _, body = reader.response()
            assert (status, json.loads(body)["message"]) == (
                500, "The handler set an invalid status: 42")
        sock.sendall(post(f"/predictions/{setter}", b"x",   # and a good one goes out
                          b"X-Set-Name: X-Good\r\nX-Set-Value: %s\r\n" % b"ok".hex().encode()))
        status, headers, body = reader.response()
        assert (status, headers["x-good"], body) == (200, "ok", b"set")
