"""Java-properties syntax, as TorchServe's config.properties uses it."""
from __future__ import annotations

import re
from collections.abc import Iterable


def parse_properties(text: str) -> dict[str, str]:
    """Java-properties syntax: ``k=v``, ``k: v`` or ``k v``; ``#``/``!`` comments; a trailing
    backslash continues the line (leading blanks of the next line dropped); later keys win.
    Backslash escapes (``\\=``, ``\\:``, ``\\ ``, ``\\n``, ``\\t``, ``\\uXXXX``) are decoded.
    """
    result: dict[str, str] = {}
    for logical in _logical_lines(text.splitlines()):
        key, value = _split_key_value(logical)
        result[_unescape(key)] = _unescape(value)
    return result


def _logical_lines(lines: Iterable[str]) -> Iterable[str]:
    pending: str | None = None
    for raw in lines:
        line = raw.lstrip(" \t\f")
        if pending is None:
            if not line or line[0] in "#!":
                continue
            pending = ""
        if _ends_with_continuation(line):
            pending += line[:-1]
            continue
        yield pending + line
        pending = None
    if pending:
        yield pending


def _ends_with_continuation(line: str) -> bool:
    trailing = len(line) - len(line.rstrip("\\"))
    return trailing % 2 == 1


def _split_key_value(line: str) -> tuple[str, str]:
    index, length = 0, len(line)
    while index < length:
        char = line[index]
        if char == "\\":
            index += 2
            continue
        if char in "=: \t\f":
            break
        index += 1
    key = line[:index]
    rest = line[index:].lstrip(" \t\f")
    if rest[:1] in ("=", ":") and (index >= length or line[index] in " \t\f=:"):
        rest = rest[1:].lstrip(" \t\f")
    return key, rest.rstrip()


_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    out, index = [], 0
    while index < len(text):
        char = text[index]
        if char != "\\" or index + 1 >= len(text):
            out.append(char)
            index += 1
            continue
        nxt = text[index + 1]
        if nxt == "u" and re.fullmatch(r"[0-9A-Fa-f]{4}", text[index + 2:index + 6]):
            out.append(chr(int(text[index + 2:index + 6], 16)))
            index += 6
            continue
        out.append(_ESCAPES.get(nxt, nxt))
        index += 2
    return "".join(out)
