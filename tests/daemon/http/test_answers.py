"""A prediction's answer as HTTP/1.1 puts it (daemon/http/answers.py)."""
from __future__ import annotations

import pytest

from daemon.errors import InternalServerError
from daemon.http.answers import LAST_CHUNK, STATUS_LINE, chunk, response_headers, valid_header


def test_status_lines_carry_the_standard_phrase_or_none():
    assert STATUS_LINE[200] == b"HTTP/1.1 200 OK\r\n"
    assert STATUS_LINE[507] == b"HTTP/1.1 507 Insufficient Storage\r\n"
    assert STATUS_LINE[513] == b"HTTP/1.1 513 \r\n"
    assert set(STATUS_LINE) == set(range(100, 600))


@pytest.mark.parametrize("name, value, ok", [
    ("x-custom", "a value\twith a tab", True),
    ("x-bad name", "v", False),            # a space is no token character
    ("x-split", "a\r\nx-injected: 1", False),
    ("x-nul", "a\x00b", False),
    ("", "v", False),
    ("x-unicode", "caf\u00e9", True),       # latin-1 encodable
    ("x-emoji", "\U0001f600", False),
])
def test_header_validation(name, value, ok):
    assert valid_header(name, value) is ok


def test_the_handlers_headers_its_type_and_the_default():
    response = {"status": 201, "headers": [["X-A", "1"], ["Content-Length", "99"],
                                           ["transfer-encoding", "chunked"]],
                "content_type": "text/plain"}
    assert response_headers(response, "application/json") == {
        "x-a": "1", "content-type": "text/plain"}   # framing is the server's
    assert response_headers({}, "application/json") == {"content-type": "application/json"}
    assert response_headers({"status": 404}, "application/json") == {}


@pytest.mark.parametrize("response", [{"status": 600}, {"status": 99},
                                      {"headers": [["x-a", "b\nc"]]}])
def test_what_cannot_go_out_is_a_500(response):
    with pytest.raises(InternalServerError):
        response_headers(response, None)


def test_chunks():
    assert chunk(b"abc") == b"3\r\nabc\r\n"
    assert chunk("é") == b"2\r\n\xc3\xa9\r\n"
    assert chunk(b"") == b""   # an empty part would end the body
    assert LAST_CHUNK == b"0\r\n\r\n"
