"""daemon/http/limits.py: the answers a listener writes for a limit, the chunk-size reading,
and the sweep's pace."""
from __future__ import annotations

import json
import logging

import pytest

from daemon.http.limits import (BODY, HEAD, ClosedCount, ConnectionLimits, chunk_size_before,
                                timeout_answer, too_large_answer, unavailable_answer)


def parsed(answer: bytes) -> tuple[bytes, dict[bytes, bytes], dict]:
    head, body = answer.split(b"\r\n\r\n", 1)
    status_line, *lines = head.split(b"\r\n")
    headers = dict(line.split(b": ", 1) for line in lines)
    assert int(headers[b"content-length"]) == len(body)
    return status_line, headers, json.loads(body)


@pytest.mark.parametrize(("answer", "status", "kind", "names"), [
    (timeout_answer(HEAD, ConnectionLimits(header_timeout=2.5)), b"408",
     "RequestTimeoutException", "2.5 s (request_header_timeout)"),
    (timeout_answer(BODY, ConnectionLimits(body_timeout=7)), b"408",
     "RequestTimeoutException", "7 s (request_body_timeout)"),
    (too_large_answer(ConnectionLimits(max_body=10)), b"413", "BadRequestException",
     "max_request_size (10 bytes)"),
    (unavailable_answer(ConnectionLimits(max_connections=3)), b"503",
     "ServiceUnavailableException", "max_connections=3"),
])
def test_answers_are_torchserves_error_json_and_close(answer: bytes, status: bytes, kind: str,
                                                      names: str) -> None:
    status_line, headers, body = parsed(answer)
    assert status_line.startswith(b"HTTP/1.1 " + status + b" ")
    assert headers[b"connection"] == b"close"
    assert headers[b"content-type"] == b"application/json"
    assert body["code"] == int(status) and body["type"] == kind and names in body["message"]


@pytest.mark.parametrize(("data", "end", "size"), [
    (b"ffffffffffffffff\r\nabc", 18, 2**64 - 1),     # the whole line, its data after it
    (b"x\r\n1A;name=v\r\n", 14, 26),                 # an extension is not the size
    (b"fff\r\n", 5, 0xfff),                          # only the line's tail in this read
    (b"\r\n", 2, None),
    (b"zz\r\n", 4, None),                            # not a size line: no refusal
    (b"abc", 3, None),                               # no line end where the data began
])
def test_chunk_size_before(data: bytes, end: int, size: int | None) -> None:
    assert chunk_size_before(data, end) == size


@pytest.mark.parametrize(("header", "body", "send", "every"), [
    (60, 60, 60, 1.0), (1, 1, 60, 0.25), (0.2, 60, 60, 0.1), (2, 0.5, 60, 0.125),
    (60, 60, 2, 0.5)])
def test_the_sweep_runs_a_quarter_of_the_shortest_limit_apart(header: float, body: float,
                                                              send: float,
                                                              every: float) -> None:
    assert ConnectionLimits(header, body, send).sweep_interval == every


def test_closed_connections_are_logged_one_line_at_a_time(caplog) -> None:
    closed = ClosedCount("inference")
    with caplog.at_level(logging.WARNING, logger="daemon.http.limits"):
        for reason in (HEAD, HEAD, BODY, None):
            closed.add(reason)
        closed.flush()
        closed.flush()
    assert [r.getMessage() for r in caplog.records] == [
        "inference listener closed connections held past a limit: 1 body, 2 head"]
