"""A prediction's answer as HTTP/1.1 puts it: the status line, the handler's headers checked and
framed by the server, a part as a chunk. Both of the inference listener's paths (ASGI and the
direct path) write answers with these."""
from __future__ import annotations

import http
import re
from typing import Any

from daemon.errors import InternalServerError



def _phrase(code: int) -> str:
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return ""


# A status line per status code, as the listener writes it (RFC 9112 section 4); a code with no
# standard phrase gets an empty one.
STATUS_LINE = {code: b"HTTP/1.1 %d %s\r\n" % (code, _phrase(code).encode())
               for code in range(100, 600)}

# RFC 9110 5.1: a field name is a token; 5.5: a field value has no control characters but
# horizontal tab (a CR or LF in either would let the handler write a response of its own).
_NOT_TOKEN = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

# How a response is framed is the server's business: a handler's own Content-Length (wrong
# once the body is chunked) or Transfer-Encoding would break the connection for every client.
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})


def valid_header(name: str, value: str) -> bool:
    try:
        raw_name, raw_value = name.encode("latin-1"), value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return bool(raw_name) and not _NOT_TOKEN.search(raw_name) and not _CONTROL.search(raw_value)


def response_headers(response: dict[str, Any], default_type: str | None) -> dict[str, str]:
    """The headers the handler set, and its content type exactly as it gave it (starlette's
    media_type would append a charset to text types), else ``default_type`` on a success.

    An InternalServerError (500) for a status or a header that cannot go out."""
    status = response.get("status") or 200
    if status not in STATUS_LINE:
        raise InternalServerError(f"The handler set an invalid status: {status!r}")
    headers = {}
    for name, value in response.get("headers") or ():
        name, value = str(name).lower(), str(value)
        if name not in FRAMING_HEADERS:
            headers[name] = value
    if response.get("content_type"):
        headers["content-type"] = str(response["content_type"])
    for name, value in headers.items():   # all the handler's; the default type below is ours
        if not valid_header(name, value):
            raise InternalServerError(f"The handler set an invalid response header: "
                                      f"{name[:100]!r}")
    if default_type and status < 400:
        headers.setdefault("content-type", default_type)
    return headers


def body_bytes(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return bytes(body) if body is not None else b""


def chunk(body: Any) -> bytes:
    """One part as a chunk of a chunked body (an empty part writes nothing: an empty chunk
    would end the body)."""
    data = body_bytes(body)
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


LAST_CHUNK = b"0\r\n\r\n"
