"""JSON laid out as TorchServe writes it, so a curl user or a shell script sees the same text.

TorchServe renders its documents with GSON's pretty printer (two spaces of indent, ``"key":
value``, ``[]`` and ``{}`` when empty, no escaping of non-ASCII text), and its HTTP bodies end
with a newline; its gRPC messages (describe, list, ping) carry the same text without it. A
script that counts ``"status": "READY"`` lines of a describe, or greps ``"status": "Healthy"``,
works only on that layout; json.dumps with an indent of 2 writes it.
"""
from __future__ import annotations

import json
from typing import Any

_as_json_string = json.JSONEncoder(ensure_ascii=False).encode


def document_text(document: Any) -> str:
    """A gRPC message's text: the document without the final newline."""
    return json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False)


def document_bytes(document: Any) -> bytes:
    """An HTTP body: the document and a newline, UTF-8."""
    return (document_text(document) + "\n").encode()


def error_bytes(code: int, type_name: str, message: str) -> bytes:
    """TorchServe's error body ``{"code", "type", "message"}``: exactly document_bytes of it,
    spelled directly because it is the one document the inference port writes under load (a
    full queue's 503s), where json.dumps' indenting encoder costs four times as much."""
    return ('{\n  "code": %d,\n  "type": %s,\n  "message": %s\n}\n'
            % (code, _as_json_string(type_name), _as_json_string(message))).encode()
