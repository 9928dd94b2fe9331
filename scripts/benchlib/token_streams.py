"""Closed-loop load of streamed token answers, timing every token: N clients, each sending
requests back to back on its own keep-alive connection and reading each answer as it comes
(benchlib/token_answers.py parses them: OpenAI's server-sent events, or TorchServe's chunked
parts). Per request it keeps the time of every token event (perf_counter, taken when the bytes
carrying it were read), from which the run's figures come: output tokens/s, time to the first
token and time per output token.

The bench's clients share 2 CPUs with the server they measure, so the client is lean: one
coroutine resume per socket read (not per event), an incremental parser that does bytes.find
over what arrived, asyncio on uvloop when the driver's venv has it; no HTTP library, no OpenAI
client.
"""
from __future__ import annotations

import asyncio
import bisect
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .streams import KeptConnection, percentile, run_load
from .token_answers import AnswerReader, BadAnswer, verdict

REQUEST_TIMEOUT_S = 120.0   # one answer; a stalled server fails the request, not the bench
READ_SIZE = 256 * 1024


@dataclass
class TokenOutcome:
    """One request: when it was written, when each of its tokens arrived, how it ended."""

    sent_at: float
    token_times: list[float] = field(default_factory=list)   # of its token events
    tokens: int = 0                                          # tokens generated (see tokens)
    ok: bool = False
    error: str = ""
    done_at: float = 0.0


@dataclass(frozen=True)
class StreamTarget:
    """What the clients send: the URL, the request bodies (taken in turn), how answers come."""

    url: str
    bodies: Sequence[bytes]
    fmt: str                                   # "sse" or "parts"
    expected_tokens: int | None                # see verdict()
    content_type: str | None = "application/json"

    def requests(self) -> list[bytes]:
        parsed = urllib.parse.urlsplit(self.url)
        host = f"{parsed.hostname}:{parsed.port}"
        typed = f"Content-Type: {self.content_type}\r\n" if self.content_type else ""
        return [(f"POST {parsed.path or '/'} HTTP/1.1\r\nHost: {host}\r\n{typed}"
                 f"Content-Length: {len(body)}\r\n\r\n").encode() + body for body in self.bodies]


@dataclass
class _Shared:
    requests: list[bytes]
    max_requests: int
    deadline: float
    taken: int = 0
    outcomes: list[TokenOutcome] = field(default_factory=list)

    def next_request(self) -> bytes | None:
        if self.taken >= self.max_requests or time.perf_counter() >= self.deadline:
            return None
        self.taken += 1
        return self.requests[(self.taken - 1) % len(self.requests)]


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    request: bytes, outcome: TokenOutcome, target: StreamTarget) -> bool:
    """Send one request and read its answer into ``outcome``; whether the connection can carry
    the next request."""
    answer = AnswerReader(target.fmt, outcome.token_times)
    outcome.sent_at = time.perf_counter()
    writer.write(request)
    while not answer.done:
        data = await reader.read(READ_SIZE)
        now = time.perf_counter()
        if not data:
            answer.eof(now)
            break
        answer.feed(data, now)
    outcome.tokens = answer.tokens
    outcome.error = verdict(answer, target.expected_tokens)
    outcome.ok = not outcome.error
    return answer.reusable


async def _client(host: str, port: int, target: StreamTarget, shared: _Shared,
                  timeout: float) -> None:
    conn = KeptConnection(host, port, timeout)
    try:
        while (request := shared.next_request()) is not None:
            outcome = TokenOutcome(time.perf_counter())
            try:
                streams = await conn.open()
                async with asyncio.timeout(timeout):
                    reusable = await _exchange(*streams, request, outcome, target)
                broken = False
            except (OSError, TimeoutError, BadAnswer, ValueError) as exc:
                outcome.ok, outcome.error = False, f"{type(exc).__name__}: {exc}"
                reusable, broken = False, True
            outcome.done_at = time.perf_counter()
            shared.outcomes.append(outcome)
            await conn.after(reusable, broken)
    finally:
        conn.close()


def summarize(outcomes: Sequence[TokenOutcome], started: float, window_end: float,
              clients: int) -> dict[str, Any]:
    """The run's figures.

    - tokens_per_s: tokens that arrived within the window (``started`` to ``window_end``; the
      answers still streaming then finish, their later tokens are not counted) over its length;
      each token event of an answer counts for tokens / events of it.
    - ttft (time to first token): request written -> its first token event read, per answer.
    - tpot (time per output token): per answer, (last token event - first) / (tokens - 1), as
      vLLM's benchmark defines it; itl: every gap between consecutive token events of an answer
      (two events read in one socket read have a gap of 0).
    Percentiles (ms) over the good answers; ``tokens`` counts every token of every answer, for
    costs per token over the whole run (drain included)."""
    window = max(window_end - started, 1e-9)
    good = [o for o in outcomes if o.ok]
    failed = [o for o in outcomes if not o.ok]
    ttft = [(o.token_times[0] - o.sent_at) * 1000 for o in good if o.token_times]
    tpot = [(o.token_times[-1] - o.token_times[0]) / (o.tokens - 1) * 1000
            for o in good if o.token_times and o.tokens > 1]
    itl = [(b - a) * 1000 for o in good for a, b in zip(o.token_times, o.token_times[1:])]
    in_window = sum(bisect.bisect_right(o.token_times, window_end) * o.tokens
                    / len(o.token_times) for o in outcomes if o.token_times)
    answered_in_window = sum(1 for o in good if o.done_at <= window_end)
    tokens = sum(o.tokens for o in outcomes)
    events = sum(len(o.token_times) for o in outcomes)
    return {"clients": clients, "requests": len(outcomes), "answered": len(good),
            "failed": len(failed), "errors": sorted({o.error for o in failed})[:5],
            "duration_s": window, "tokens": tokens, "token_events": events,
            "tokens_in_window": in_window,
            "tokens_per_s": in_window / window, "answers_per_s": answered_in_window / window,
            "mean_tokens": (sum(o.tokens for o in good) / len(good)) if good else None,
            "ttft_p50_ms": percentile(ttft, 50), "ttft_p99_ms": percentile(ttft, 99),
            "tpot_p50_ms": percentile(tpot, 50), "tpot_p99_ms": percentile(tpot, 99),
            "itl_p50_ms": percentile(itl, 50), "itl_p99_ms": percentile(itl, 99)}


async def _drive(target: StreamTarget, clients: int, seconds: float, max_requests: int,
                 timeout: float) -> dict[str, Any]:
    parsed = urllib.parse.urlsplit(target.url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    started = time.perf_counter()
    shared = _Shared(target.requests(), max_requests, started + seconds)
    await asyncio.gather(*(_client(host, port, target, shared, timeout) for _ in range(clients)))
    drained = time.perf_counter()
    stats = summarize(shared.outcomes, started, min(started + seconds, drained), clients)
    stats["drain_s"] = max(0.0, drained - started - seconds)
    return stats


def run_token_streams(target: StreamTarget, clients: int, seconds: float, max_requests: int,
                      request_timeout: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
    """``clients`` closed loops against ``target`` for ``seconds`` (no new request after that;
    the ones in flight finish, each within ``request_timeout``) or ``max_requests`` requests,
    whichever comes first. Also records the CPU the driver itself used (client_cpu_s)."""
    return run_load(lambda: _drive(target, clients, seconds, max_requests, request_timeout))
