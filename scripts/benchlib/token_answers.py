"""How a streamed answer is read, as it arrives: an incremental HTTP/1.1 answer parser
(chunked, Content-Length and read-to-close bodies) that notes the status, when each token event
arrived and how many tokens the answer has, and the verdict on the answer. Pure: no sockets
(benchlib/token_streams.py feeds it what each read returns; the tests feed it from memory).

Two answer formats:
- ``sse``: an OpenAI completion stream, ``data: {chunk}`` events then ``data: [DONE]``. A chunk
  whose choice has text is a token event. Not every token makes one: a token that ends
  mid-character (byte-level BPE) or decodes to nothing (a special token) adds no text, and its
  text comes with a later event, as vLLM and OpenAI stream; the finish reason comes in a chunk
  of its own with empty text. So the answer's token count is the ``usage.completion_tokens`` of
  its last chunk (the request asks for it with ``stream_options.include_usage``), and each
  event stands for tokens / events of them.
- ``parts``: TorchServe's streamed answers, one chunk of the chunked body per token.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

HEAD_LIMIT = 64 * 1024
SAMPLE_BYTES = 200          # of an answer's body, kept for the error message of a failed one


class BadAnswer(Exception):
    pass


def sse_payloads(event: bytes) -> bytes | None:
    """The data of one server-sent event (its ``data:`` lines joined by newlines), None when it
    has none (a comment, a keep-alive)."""
    lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n")
             if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


def parse_chunk(payload: bytes) -> dict[str, Any] | None:
    """An SSE data payload as a JSON object (None when it is not one)."""
    try:
        chunk = json.loads(payload)
    except ValueError:
        return None
    return chunk if isinstance(chunk, dict) else None


def chunk_text(chunk: dict[str, Any]) -> str:
    """The text a completion (``text``) or chat (``delta.content``) chunk adds; "" for a
    usage-only chunk (no choices), a finish chunk or an error."""
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    choice = choices[0]
    text = choice.get("text")
    if text is None and isinstance(choice.get("delta"), dict):
        text = choice["delta"].get("content")
    return text if isinstance(text, str) else ""


def chunk_tokens(chunk: dict[str, Any]) -> int | None:
    """``usage.completion_tokens`` of a chunk that has it (the last, with include_usage)."""
    usage = chunk.get("usage")
    count = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return count if isinstance(count, int) else None


@dataclass
class AnswerReader:
    """An incremental reader of one HTTP/1.1 answer: feed() it the bytes as they arrive (with
    the time they arrived); it notes the status, the time of each token and when the answer
    ends. Chunked, Content-Length and read-to-close bodies."""

    fmt: str                                   # "sse" or "parts"
    token_times: list[float] = field(default_factory=list)
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    done: bool = False                         # the answer ended
    saw_done_event: bool = False               # SSE: data: [DONE]
    usage_tokens: int | None = None            # SSE: usage.completion_tokens
    error_event: str = ""                      # SSE: a data payload with an "error" object
    sample: bytearray = field(default_factory=bytearray)
    _buffer: bytearray = field(default_factory=bytearray)
    _events: bytearray = field(default_factory=bytearray)
    _state: str = "head"                       # head, size, data, trailers, length, close
    _remaining: int = 0

    @property
    def tokens(self) -> int:
        """Tokens generated for the answer: what its usage says, else one per token event."""
        return len(self.token_times) if self.usage_tokens is None else self.usage_tokens

    @property
    def reusable(self) -> bool:
        return self.done and self.headers.get("connection", "").lower() != "close"

    def feed(self, data: bytes, now: float) -> None:
        self._buffer += data
        pos = 0
        while not self.done:
            advanced = self._step(pos, now)
            if advanced < 0:
                break
            pos = advanced
        del self._buffer[:pos]

    def eof(self, now: float) -> None:
        """The connection closed: the end of a read-to-close body, else a truncated answer."""
        if self._state == "close":
            self._finish(now)
        elif not self.done:
            raise BadAnswer(f"connection closed mid-answer ({self._state})")

    def _step(self, pos: int, now: float) -> int:
        """Parse one piece at ``pos``; the position after it, or -1 when more bytes are needed."""
        buf = self._buffer
        if self._state == "head":
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                if len(buf) - pos > HEAD_LIMIT:
                    raise BadAnswer("response head too large")
                return -1
            self._head(bytes(buf[pos:end]))
            return end + 4
        if self._state == "size":
            end = buf.find(b"\r\n", pos)
            if end < 0:
                return -1
            size = int(bytes(buf[pos:end]).split(b";", 1)[0].strip(), 16)
            self._state, self._remaining = ("trailers", 0) if size == 0 else ("data", size)
            return end + 2
        if self._state == "data":
            if len(buf) - pos < self._remaining + 2:
                return -1
            self._body(bytes(buf[pos:pos + self._remaining]), now, whole_part=True)
            self._state = "size"
            return pos + self._remaining + 2
        if self._state == "trailers":
            end = buf.find(b"\r\n", pos)
            if end < 0:
                return -1
            if end == pos:          # the empty line that ends the trailers
                self._finish(now)
            return end + 2
        # "length" and "close": whatever arrived is body
        take = len(buf) - pos if self._state == "close" else min(self._remaining, len(buf) - pos)
        if take <= 0:
            return -1
        self._body(bytes(buf[pos:pos + take]), now, whole_part=False)
        self._remaining -= take
        if self._state == "length" and self._remaining == 0:
            self._finish(now)
        return pos + take

    def _head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise BadAnswer(f"bad status line {lines[0]!r:.80}")
        self.status = int(parts[1])
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                self.headers[name.strip().lower()] = value.strip()
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            self._state = "size"
        elif "content-length" in self.headers:
            self._state, self._remaining = "length", int(self.headers["content-length"])
            if self._remaining == 0:
                self._finish(0.0)
        else:
            self._state = "close"

    def _body(self, piece: bytes, now: float, whole_part: bool) -> None:
        if len(self.sample) < SAMPLE_BYTES:
            self.sample += piece[:SAMPLE_BYTES - len(self.sample)]
        if self.status != 200:
            return
        if self.fmt == "parts":
            # TorchServe writes each streamed part as one chunk; an unchunked body is one part,
            # counted when it ends (_finish).
            if whole_part and piece:
                self.token_times.append(now)
            return
        self._events += piece
        self._flush_events(now, final=False)

    def _flush_events(self, now: float, final: bool = True) -> None:
        if b"\r" in self._events:   # SSE allows CRLF line ends; the events are split on LF
            self._events = bytearray(self._events.replace(b"\r\n", b"\n"))
        while True:
            end = self._events.find(b"\n\n")
            if end < 0:
                if final and self._events.strip():
                    end = len(self._events)   # a last event without its blank line
                else:
                    return
            event = bytes(self._events[:end])
            del self._events[:end + 2]
            self._event(event, now)

    def _event(self, event: bytes, now: float) -> None:
        payload = sse_payloads(event)
        if payload is None:
            return
        if payload.strip() == b"[DONE]":
            self.saw_done_event = True
            return
        chunk = parse_chunk(payload)
        if chunk is None or "error" in chunk:
            if not self.error_event:
                self.error_event = payload.decode(errors="replace")[:SAMPLE_BYTES]
            return
        if chunk_text(chunk):
            self.token_times.append(now)
        count = chunk_tokens(chunk)
        if count is not None:
            self.usage_tokens = count

    def _finish(self, now: float) -> None:
        unchunked = self._state in ("length", "close")
        if self.status == 200 and unchunked and self.fmt == "parts" and self.sample:
            self.token_times.append(now)
        if self.fmt == "sse":
            self._flush_events(now)
        self.done = True


def verdict(answer: AnswerReader, expected_tokens: int | None) -> str:
    """Why the answer is not a good one ("" when it is). ``expected_tokens``: the exact count
    every answer must have (None: at least one; a model that can stop early)."""
    if answer.status != 200:
        return f"HTTP {answer.status}: {bytes(answer.sample[:120])!r}"
    if answer.error_event:
        return f"error event: {answer.error_event[:120]}"
    if answer.fmt == "sse" and not answer.saw_done_event:
        return "no data: [DONE]"
    if not answer.token_times:
        return "no token"
    if expected_tokens is not None and answer.tokens != expected_tokens:
        return f"{answer.tokens} tokens, expected {expected_tokens}"
    return ""
