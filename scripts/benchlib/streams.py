"""Closed-loop load of streamed answers: N clients, each sending requests back to back on its own
keep-alive connection and reading each chunked answer as it comes (wrk cannot time a first chunk).

Each request's body is ``{"k": k}``, k drawn from ``ks`` (a fixed sequence: the same for every
server, whatever the order the clients take them in). Per request it records the time to the
first part (the first chunk of the body) and to the end of the answer, from the moment the
request was written. Stdlib only (asyncio streams; uvloop when the driver's venv has it).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import resource
import time
import urllib.parse
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

K_RANGE = (8, 64)
K_SEED = 20250601
REQUEST_TIMEOUT_S = 60.0   # one answer; a stalled server fails the request, not the bench
HEAD_LIMIT = 64 * 1024


def k_sequence(count: int, seed: int = K_SEED, low: int = K_RANGE[0],
               high: int = K_RANGE[1]) -> list[int]:
    """The steps each request asks for, in the order they are sent: fixed by ``seed``."""
    rng = random.Random(seed)
    return [rng.randint(low, high) for _ in range(count)]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's
    default); None for no values."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, None when either is unknown or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def shown(value: float | None, fmt: str) -> str:
    """``value`` formatted for a summary line, "-" when it was not measured."""
    return "-" if value is None else format(value, fmt)


def not_measured_lines(runs: dict[str, list[dict[str, Any]]], field: str,
                       what: Callable[[str], str]) -> list[str]:
    """One line per server and variant that a measured round left out (each round's
    ``field``: {variant: why}), with why; ``what(variant)`` names the variant."""
    lines = []
    for name, rounds in runs.items():
        reasons: dict[str, list[str]] = {}
        for result in rounds:
            for variant, why in result.get(field, {}).items():
                reasons.setdefault(variant, []).append(why)
        for variant, whys in reasons.items():
            lines.append(f"{name} {what(variant)}: not measured in {len(whys)} of "
                         f"{len(rounds)} rounds: {'; '.join(sorted(set(whys)))}")
    return lines


class KeptConnection:
    """A closed-loop client's keep-alive connection: opened when a request needs one, kept
    while answers leave it usable, dropped after one that does not or after an error (then a
    pause: a refused, reset or stalled connection must not make the client spin)."""

    BROKEN_PAUSE_S = 0.1

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.streams is None:
            self.streams = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.timeout)
        return self.streams

    async def after(self, reusable: bool, broken: bool) -> None:
        """An exchange ended: keep the connection only if its answer left it ``reusable``."""
        if not reusable:
            self.close()
        if broken:
            await asyncio.sleep(self.BROKEN_PAUSE_S)

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


@dataclass
class Outcome:
    k: int
    ok: bool
    first_s: float | None = None   # request written -> first chunk of the body
    total_s: float | None = None   # request written -> end of the answer
    parts: int = 0
    error: str = ""
    done_at: float = 0.0           # perf_counter() when the answer ended (or failed)


class BadAnswer(Exception):
    pass


@dataclass
class _Shared:
    ks: Sequence[int]
    deadline: float
    taken: int = 0
    outcomes: list[Outcome] = field(default_factory=list)

    def next_k(self) -> int | None:
        if self.taken >= len(self.ks) or time.perf_counter() >= self.deadline:
            return None
        self.taken += 1
        return self.ks[self.taken - 1]


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > HEAD_LIMIT:
        raise BadAnswer("response head too large")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise BadAnswer(f"bad status line {lines[0]!r:.80}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes,
               k: int) -> tuple[Outcome, bool]:
    """Send one request and read its answer; returns the outcome and whether the connection
    can carry the next request."""
    started = time.perf_counter()
    writer.write(request)
    status, headers = await _read_head(reader)
    first: float | None = None
    body = bytearray()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":   # trailers
                    pass
                break
            chunk = await reader.readexactly(size + 2)
            if first is None:
                first = time.perf_counter() - started
            body += chunk[:-2]
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if length:
            body += await reader.readexactly(length)
            first = time.perf_counter() - started
    else:
        body += await reader.read()   # to the end of the connection
        first = time.perf_counter() - started
    total = time.perf_counter() - started
    reusable = headers.get("connection", "").lower() != "close"
    # The parts are JSON objects {"step": i} (TorchServe pretty-prints them): count them.
    parts = body.count(b'"step"')
    if status != 200:
        return Outcome(k, False, first, total, parts, f"HTTP {status}: {bytes(body[:120])!r}"), \
            reusable
    if parts != k:
        return Outcome(k, False, first, total, parts, f"{parts} parts, expected {k}"), reusable
    return Outcome(k, True, first, total, parts), reusable


async def exchange(conn: KeptConnection, path: str, k: int, timeout: float) -> Outcome:
    """One request of ``k`` steps on ``conn``; the connection is kept only if the answer left
    it usable."""
    body = json.dumps({"k": k}).encode()
    request = (f"POST {path} HTTP/1.1\r\nHost: {conn.host}:{conn.port}\r\n"
               "Content-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    try:
        streams = await conn.open()
        outcome, reusable = await asyncio.wait_for(_one(*streams, request, k), timeout)
        broken = False
    except (OSError, TimeoutError, asyncio.IncompleteReadError,
            asyncio.LimitOverrunError, BadAnswer, ValueError) as exc:
        outcome, reusable = Outcome(k, False, error=f"{type(exc).__name__}: {exc}"), False
        broken = True
    outcome.done_at = time.perf_counter()
    await conn.after(reusable, broken)
    return outcome


async def _client(host: str, port: int, path: str, shared: _Shared, timeout: float) -> None:
    conn = KeptConnection(host, port, timeout)
    try:
        while (k := shared.next_k()) is not None:
            shared.outcomes.append(await exchange(conn, path, k, timeout))
    finally:
        conn.close()


async def _drive(url: str, clients: int, ks: Sequence[int], seconds: float,
                 timeout: float) -> dict[str, Any]:
    parsed = urllib.parse.urlsplit(url)
    host, port, path = parsed.hostname or "127.0.0.1", parsed.port or 80, parsed.path or "/"
    started = time.perf_counter()
    shared = _Shared(ks, started + seconds)
    await asyncio.gather(*(_client(host, port, path, shared, timeout) for _ in range(clients)))
    drained = time.perf_counter()
    stats = summarize(shared.outcomes, started, min(started + seconds, drained), clients)
    stats["drain_s"] = max(0.0, drained - started - seconds)
    return stats


def summarize(outcomes: Sequence[Outcome], started: float, window_end: float,
              clients: int) -> dict[str, Any]:
    """The run's figures. Throughput, as wrk counts it: the answers completed within the window
    (``started`` to ``window_end``; answers still streaming then are finished but not counted)
    over its length. Percentiles (ms) over every answered request; failures are counted, with a
    few of their reasons."""
    window = max(window_end - started, 1e-9)
    good = [o for o in outcomes if o.ok]
    in_window = [o for o in good if o.done_at <= window_end]
    first = [o.first_s * 1000 for o in good if o.first_s is not None]
    total = [o.total_s * 1000 for o in good if o.total_s is not None]
    failed = [o for o in outcomes if not o.ok]
    return {"clients": clients, "requests": len(outcomes), "answered": len(good),
            "failed": len(failed), "errors": sorted({o.error for o in failed})[:5],
            "duration_s": window, "rps": len(in_window) / window,
            "parts_per_s": sum(o.parts for o in in_window) / window,
            "mean_k": sum(o.k for o in good) / len(good) if good else None,
            "ttfp_p50_ms": percentile(first, 50), "ttfp_p99_ms": percentile(first, 99),
            "total_p50_ms": percentile(total, 50), "total_p99_ms": percentile(total, 99)}


def run_streams(url: str, clients: int, ks: Sequence[int], seconds: float,
                request_timeout: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
    """``clients`` closed loops against ``url`` for ``seconds`` (no new request after that; the
    ones in flight finish, each within ``request_timeout``) or ``len(ks)`` requests, whichever
    comes first."""
    return run_load(lambda: _drive(url, clients, ks, seconds, request_timeout))


def run_load(main: Callable[[], Coroutine[Any, Any, dict[str, Any]]]) -> dict[str, Any]:
    """The figures of the load ``main()``, run on uvloop where the driver's venv has it, with
    the CPU the driver itself used (client_cpu_s): it shares the machine with the server."""
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop
        loop_factory = uvloop.new_event_loop
    before = resource.getrusage(resource.RUSAGE_SELF)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        stats = runner.run(main())
    after = resource.getrusage(resource.RUSAGE_SELF)
    stats["client_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return stats
