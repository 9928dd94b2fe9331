"""Hostile clients on loopback (issue 28): raw sockets that stall, lie, nest and flood, against
one daemon with short limits. Each attack is bounded in connections and time; after each the
daemon still answers /ping, and once every attack connection is closed its descriptors are back
where they started. The TLS and unix listeners: test_hostile_tls_unix.py.

What already held before the issue is kept from regressing here too: no smuggling (CL+TE,
duplicate Content-Length), 431 past 64 KiB of head, 413 for a big body at once, pipelining,
no path escape from a registration URL.
"""
from __future__ import annotations

import json
import socket
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest
import requests

from tests.support.daemon import Daemon
from tests.support.grpc_stubs import channel, generate_stubs
from tests.support.raw_http import answer, connect, error_json, head, status
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(90)

LIMIT_S = 1.0                 # request_header_timeout and request_body_timeout
MAX_CONNECTIONS = 24
MAX_UNPACKED = 4 << 20
HTTP = ("inference", "management", "metrics")
NESTED = b"[" * 100_000 + b"]" * 100_000
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def hostile(archive_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    workdir = tmp_path_factory.mktemp("hostile")
    store = workdir / "store"
    store.mkdir()
    for name in ("echo.mar", "noop.mar"):
        (store / name).write_bytes((archive_dir / name).read_bytes())
    daemon = Daemon(workdir, store, {
        "request_header_timeout": LIMIT_S, "request_body_timeout": LIMIT_S,
        "max_connections": MAX_CONNECTIONS, "max_unpacked_archive_size": MAX_UNPACKED})
    daemon.start()
    try:
        r = daemon.register("echo.mar", model_name="echo", initial_workers=1)
        assert r.status_code == 200, r.text
        yield daemon
        # The attacks are over: a graceful stop is prompt (a connection task left behind
        # would hold it for the listeners' 30 s of grace).
        assert daemon.stop(timeout=15) == 0, daemon.log(3000)
    finally:
        daemon.cleanup()


@pytest.fixture(scope="module")
def baseline_fds(hostile: Daemon) -> int:
    """The daemon's descriptors before any attack (after a first request on every port)."""
    for api in HTTP:
        requests.get(hostile.url(api, "/ping" if api == "inference" else "/"), timeout=10)
    return psutil.Process(hostile.pid).num_fds()


@pytest.fixture(scope="module")
def baseline_rss(hostile: Daemon, baseline_fds: int) -> int:
    return psutil.Process(hostile.pid).memory_info().rss


@pytest.fixture(autouse=True)
def still_serving(hostile: Daemon, baseline_fds: int, baseline_rss: int) -> Iterator[None]:
    """After every attack: /ping answers and the descriptors come back."""
    yield
    assert hostile.infer("GET", "/ping", timeout=10).json() == {"status": "Healthy"}
    wait_until(lambda: psutil.Process(hostile.pid).num_fds() <= baseline_fds + 8, 15, 0.1,
               lambda: f"descriptors back to {baseline_fds} (now "
                       f"{psutil.Process(hostile.pid).num_fds()})")


# ---- time limits ----------------------------------------------------------------------------

@pytest.mark.parametrize("api", HTTP)
def test_a_head_sent_a_byte_at_a_time_gets_408(hostile: Daemon, api: str) -> None:
    with connect(hostile, api) as sock:
        started, data = time.monotonic(), b""
        for byte in b"GET /ping HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"x" * 200:
            sock.sendall(bytes([byte]))
            data, _ = answer(sock, 0.2)       # the pace: one byte per 0.2 s of silence
            if data:
                break
        assert status(data) == 408, data
        assert error_json(data)["type"] == "RequestTimeoutException"
        assert "request_header_timeout" in error_json(data)["message"]
        assert LIMIT_S - 0.1 <= time.monotonic() - started < LIMIT_S + 2


@pytest.mark.parametrize("api", HTTP)
def test_a_silent_connection_is_closed_without_an_answer(hostile: Daemon, api: str) -> None:
    with connect(hostile, api) as sock:
        data, took = answer(sock, LIMIT_S + 5)
    assert data == b"" and took < LIMIT_S + 2


@pytest.mark.parametrize(("api", "path"), [("inference", "/predictions/echo"),
                                            ("management", "/models?url=noop.mar")])
def test_a_chunked_body_that_stops_gets_408(hostile: Daemon, api: str, path: str) -> None:
    with connect(hostile, api) as sock:
        sock.sendall(head(path, "POST", "Content-Type: application/json",
                          "Transfer-Encoding: chunked") + b"3\r\n[1,\r\n")
        data, took = answer(sock, LIMIT_S + 5)
    assert status(data) == 408, data
    assert "request_body_timeout" in error_json(data)["message"]
    assert took < LIMIT_S + 2


def test_a_body_that_stops_after_the_answer_began_is_closed(hostile: Daemon) -> None:
    """/metrics answers without reading the body it was sent: no 408 can follow a 200."""
    with connect(hostile, "metrics") as sock:
        sock.sendall(head("/metrics", "GET", "Content-Length: 100") + b"abc")
        data, took = answer(sock, LIMIT_S + 5)
    assert status(data) == 200 and data.count(b"HTTP/1.1") == 1
    assert took < LIMIT_S + 2


def test_a_trickling_body_is_not_cut(hostile: Daemon) -> None:
    """The body limit is on silence, not on the whole body: bytes every half limit go on."""
    body = json.dumps({"data": "x" * 6}).encode()
    with connect(hostile, "inference") as sock:
        sock.sendall(head("/predictions/echo", "POST", "Content-Type: application/json",
                          f"Content-Length: {len(body)}", "Connection: close"))
        for piece in (body[:5], body[5:10], body[10:]):
            data, _ = answer(sock, LIMIT_S * 0.6)
            assert data == b""
            sock.sendall(piece)
        data, _ = answer(sock, 10)
    assert status(data) == 200, data


@pytest.mark.parametrize(("api", "path"), [("inference", "/predictions/echo"),
                                            ("management", "/models?url=noop.mar")])
def test_a_chunk_larger_than_max_request_size_is_413_at_once(hostile: Daemon, api: str,
                                                             path: str) -> None:
    with connect(hostile, api) as sock:
        sock.sendall(head(path, "POST", "Content-Type: application/json",
                          "Transfer-Encoding: chunked") + b"ffffffffffffffff\r\nabc")
        data, took = answer(sock, LIMIT_S + 5)
    assert status(data) == 413, data
    assert "max_request_size" in error_json(data)["message"]
    assert took < LIMIT_S / 2


# ---- connections ----------------------------------------------------------------------------

@pytest.mark.parametrize("api", ("inference", "management"))
def test_connections_past_max_connections_get_503(hostile: Daemon, api: str) -> None:
    held = [connect(hostile, api) for _ in range(MAX_CONNECTIONS)]
    try:
        with connect(hostile, api) as extra:
            extra.sendall(head("/ping" if api == "inference" else "/models", "GET"))
            data, _ = answer(extra, 5)
        assert status(data) == 503, data
        assert error_json(data)["type"] == "ServiceUnavailableException"
        assert "max_connections" in error_json(data)["message"]
    finally:
        for sock in held:
            sock.close()


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2C_UPGRADE = (b"POST /models?url=noop.mar&model_name=h2c_probe HTTP/1.1\r\nHost: a\r\n"
               b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
               b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")


@pytest.mark.parametrize("api", ("management", "metrics"))
@pytest.mark.parametrize("opening", (H2_PREFACE, H2C_UPGRADE), ids=("prior", "upgrade"))
def test_http2_is_refused_where_only_http1_is_served(hostile: Daemon, api: str,
                                                     opening: bytes) -> None:
    """An HTTP/2 connection could hold its streams past every deadline: closed at once, and the
    upgrade's request (a register) never runs."""
    with connect(hostile, api) as sock:
        sock.sendall(opening)
        _, took = answer(sock, LIMIT_S + 5)   # read to the close
    assert took < LIMIT_S
    assert hostile.mgmt("GET", "/models/h2c_probe").status_code == 404


def test_grpc_closes_connections_past_the_cap_and_silent_ones(hostile: Daemon) -> None:
    port = hostile.ports["grpc_inference"]
    held = [socket.create_connection(("127.0.0.1", port), timeout=10)
            for _ in range(MAX_CONNECTIONS + 2)]
    try:
        seen = [answer(sock, 0.3)[0] for sock in held]
        refused = [data for data in seen if data == b""]
        assert len(refused) == 2, [d[:10] for d in seen]   # the others got HTTP/2 SETTINGS
        # none of the others sends its preface: each is closed after the handshake's limit
        for sock, data in zip(held, seen):
            if data:
                _, took = answer(sock, LIMIT_S + 5)
                assert took < LIMIT_S + 2
    finally:
        for sock in held:
            sock.close()


# ---- what held already ----------------------------------------------------------------------

@pytest.mark.parametrize("api", ("inference", "management"))
@pytest.mark.parametrize("framing", [("Content-Length: 3", "Transfer-Encoding: chunked"),
                                     ("Content-Length: 3", "Content-Length: 4")])
def test_smuggling_framings_are_refused(hostile: Daemon, api: str,
                                        framing: tuple[str, str]) -> None:
    with connect(hostile, api) as sock:
        sock.sendall(head("/ping" if api == "inference" else "/models", "POST", *framing)
                     + b"0\r\n\r\nGET /ping HTTP/1.1\r\nHost: a\r\n\r\n")
        data, _ = answer(sock, 5)
    assert status(data) == 400 and data.count(b"HTTP/1.1 ") == 1, data


@pytest.mark.parametrize("api", ("inference", "management"))
def test_a_head_past_64_kib_is_431(hostile: Daemon, api: str) -> None:
    with connect(hostile, api) as sock:
        sock.sendall(head("/ping", "GET", *(f"X-Big-{n}: {'x' * 1000}" for n in range(70))))
        data, _ = answer(sock, 5)
    assert status(data) == 431, data[:200]
    assert error_json(data)["message"] == "Request header fields too large (over 65536 bytes)"


def test_a_big_body_is_413_before_it_is_sent(hostile: Daemon) -> None:
    with connect(hostile, "inference") as sock:
        sock.sendall(head("/predictions/echo", "POST", "Content-Length: 7000000"))
        data, _ = answer(sock, LIMIT_S / 2)   # the answer, before any of the body is sent
    assert status(data) == 413, data


def test_pipelined_requests_are_all_answered(hostile: Daemon) -> None:
    with connect(hostile, "inference") as sock:
        sock.sendall(head("/ping", "GET") * 199 + head("/ping", "GET", "Connection: close"))
        data, _ = answer(sock, 10)
    assert data.count(b"HTTP/1.1 200 OK") == 200


@pytest.mark.parametrize("url", ["../echo.mar", "..%2Fecho.mar", "/etc/passwd",
                                 "file:///etc/passwd"])
def test_registration_urls_do_not_escape_the_store(hostile: Daemon, url: str) -> None:
    r = hostile.mgmt("POST", "/models", params={"url": url})
    assert r.status_code == 404, r.text


# ---- bounded archives -----------------------------------------------------------------------

def test_an_archive_that_inflates_past_the_limit_is_refused_and_leaves_nothing(
        hostile: Daemon) -> None:
    bomb = hostile.model_store / "bomb.mar"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("MAR-INF/MANIFEST.json", json.dumps(
            {"runtime": "python", "model": {"modelName": "bomb", "handler": "handler.py"}}))
        zf.writestr("zeros.bin", bytes(2 * MAX_UNPACKED))
    assert bomb.stat().st_size < 64 << 10
    extracted = runtime_models(hostile)
    before = sorted(p.name for p in extracted.iterdir())
    r = hostile.mgmt("POST", "/models", params={"url": "bomb.mar"})
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "InvalidModelException"
    assert f"max_unpacked_archive_size ({MAX_UNPACKED} bytes)" in r.json()["message"]
    assert sorted(p.name for p in extracted.iterdir()) == before
    assert hostile.mgmt("GET", "/models/bomb").status_code == 404


def runtime_models(d: Daemon) -> Path:
    """The daemon's runtime directory's models/ (archives are unpacked there)."""
    return next(Path(tempfile.gettempdir()).glob(f"torchd-run-{d.pid}-*")) / "models"


# ---- every client error is a 4xx ------------------------------------------------------------

@pytest.mark.parametrize(("path", "v2"), [
    ("/predictions/echo", False), ("/v2/models/echo/infer", True),
    ("/v1/models/echo:predict", False), ("/invocations?model_name=echo", False)])
def test_deeply_nested_json_is_the_clients_400(hostile: Daemon, path: str, v2: bool) -> None:
    r = hostile.infer("POST", path, data=NESTED, headers=JSON, timeout=30)
    assert r.status_code == 400, r.text
    if v2:
        assert "nested too deeply" in r.json()["error"]
    else:
        assert r.json()["type"] == "BadRequestException", r.text
        assert "nested too deeply" in r.json()["message"]
    assert "handler failed" not in hostile.log()
    ok = hostile.infer("POST", "/predictions/echo", json={"data": [[1]]}, timeout=30)
    assert ok.status_code == 200 and ok.json()["params"]["body"]["value"] == {"data": [[1]]}


@pytest.mark.parametrize(("path", "where"), [("/v1/completions", "infer"),
                                              ("/models?url=noop.mar", "mgmt")])
def test_deeply_nested_json_is_400_where_the_daemon_reads_it(hostile: Daemon, path: str,
                                                            where: str) -> None:
    send = hostile.infer if where == "infer" else hostile.mgmt
    r = send("POST", path, data=NESTED, headers=JSON, timeout=30)
    assert r.status_code == 400, r.text
    assert "nested too deeply" in r.text


@pytest.mark.parametrize(("params", "named"), [
    ({"batch_size": 0}, "batch_size"), ({"max_batch_delay": -1}, "max_batch_delay"),
    ({"response_timeout": -5}, "response_timeout"), ({"startup_timeout": -2}, "startup_timeout"),
    ({"model_name": "x" * 5000}, "model name"), ({"model_name": "a\nb"}, "model name"),
    ({"model_name": "a\x00b"}, "model name"), ({"model_name": "-a"}, "model name")])
def test_parameters_out_of_range_are_400_naming_them(hostile: Daemon, params: dict,
                                                     named: str) -> None:
    r = hostile.mgmt("POST", "/models", params={"url": "noop.mar", **params})
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["type"] == "BadRequestException" and named in body["message"], body
    assert len(body["message"]) < 400
    assert hostile.mgmt("GET", "/models").json()["models"] == [
        {"modelName": "echo", "modelUrl": "echo.mar"}]


def test_a_scale_timeout_below_minus_one_is_400(hostile: Daemon) -> None:
    r = hostile.mgmt("PUT", "/models/echo", params={"min_worker": 1, "timeout": -7})
    assert r.status_code == 400 and "timeout" in r.json()["message"], r.text


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory):
    return generate_stubs(tmp_path_factory.mktemp("stubs"))


def test_grpc_errors_for_huge_names_fit_their_trailers(hostile: Daemon, stubs) -> None:
    name = "m" * 100_000
    with channel(hostile.ports["grpc_management"]) as chan:
        management = stubs.management_pb2_grpc.ManagementAPIsServiceStub(chan)
        with pytest.raises(grpc.RpcError) as described:
            management.DescribeModel(stubs.management_pb2.DescribeModelRequest(
                model_name=name), timeout=30)
        with pytest.raises(grpc.RpcError) as registered:
            management.RegisterModel(stubs.management_pb2.RegisterModelRequest(
                url="noop.mar", model_name=name), timeout=30)
    assert described.value.code() == grpc.StatusCode.NOT_FOUND
    assert described.value.details().startswith("Model not found: mmm")
    assert registered.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model name" in registered.value.details()
    for error in (described.value, registered.value):
        assert len(error.details()) < 1100


def test_the_daemons_memory_stayed_flat(hostile: Daemon, baseline_rss: int) -> None:
    """Last of the attacks on this daemon (tests run in file order)."""
    rss = psutil.Process(hostile.pid).memory_info().rss
    assert rss < baseline_rss + (32 << 20), (baseline_rss >> 20, rss >> 20)
