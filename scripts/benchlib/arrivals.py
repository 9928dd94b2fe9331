"""Open-loop load of streamed answers: requests arrive at random (Poisson) times at a fixed rate,
whatever the server is doing, each on a keep-alive connection that is idle at that moment (a new
one when none is).

A closed loop (streams.py) measures what a server sustains: each client waits for its answer
before it asks again, so with as many clients as a batch holds, every request of a static batch
arrives together and none waits for a batch it missed. An open loop measures what a request
waits for when it arrives in the middle of other requests' work, as the clients of a shared
endpoint do. Same request bodies, same figures (streams.summarize), stdlib only.
"""
from __future__ import annotations

import asyncio
import random
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

from .streams import REQUEST_TIMEOUT_S, KeptConnection, Outcome, exchange, run_load, summarize

ARRIVAL_SEED = 20261207
# A server this far behind has stopped keeping up: later arrivals fail at once rather than
# piling up connections without bound.
MAX_IN_FLIGHT = 512


def arrival_gaps(rate: float, count: int, seed: int = ARRIVAL_SEED) -> list[float]:
    """The seconds between one arrival and the next: exponential with mean 1 / ``rate`` (a
    Poisson process), fixed by ``seed``."""
    if rate <= 0:
        raise ValueError(f"arrival rate {rate} is not positive")
    rng = random.Random(seed)
    return [rng.expovariate(rate) for _ in range(count)]


class _OpenLoop:
    def __init__(self, url: str, timeout: float, max_in_flight: int) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.path = parsed.path or "/"
        self.timeout, self.max_in_flight = timeout, max_in_flight
        self.idle: list[KeptConnection] = []
        self.in_flight: set[asyncio.Task] = set()
        self.outcomes: list[Outcome] = []
        self.connections = 0
        self.peak_in_flight = 0

    def arrive(self, k: int) -> None:
        if len(self.in_flight) >= self.max_in_flight:
            self.outcomes.append(Outcome(k, False, error=f"over {self.max_in_flight} requests "
                                         "in flight", done_at=time.perf_counter()))
            return
        task = asyncio.create_task(self._request(k))
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)
        self.peak_in_flight = max(self.peak_in_flight, len(self.in_flight))

    async def _request(self, k: int) -> None:
        if self.idle:
            conn = self.idle.pop()   # the most recently used: the least likely to have timed out
        else:
            conn = KeptConnection(self.host, self.port, self.timeout)
            self.connections += 1
        self.outcomes.append(await exchange(conn, self.path, k, self.timeout))
        if conn.streams is not None:   # still open: the answer left it usable
            self.idle.append(conn)

    async def drain(self) -> None:
        while self.in_flight:
            await asyncio.gather(*list(self.in_flight))
        for conn in self.idle:
            conn.close()


async def _drive(url: str, rate: float, ks: Sequence[int], seconds: float, timeout: float,
                 max_in_flight: int) -> dict[str, Any]:
    loop = _OpenLoop(url, timeout, max_in_flight)
    started = time.perf_counter()
    deadline, at = started + seconds, started
    for k, gap in zip(ks, arrival_gaps(rate, len(ks))):
        at += gap
        if at >= deadline:
            break
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        loop.arrive(k)
    await loop.drain()
    drained = time.perf_counter()
    stats = summarize(loop.outcomes, started, min(deadline, drained), loop.connections)
    stats.update(rate=rate, peak_in_flight=loop.peak_in_flight,
                 drain_s=max(0.0, drained - deadline))
    return stats


def run_open_loop(url: str, rate: float, ks: Sequence[int], seconds: float,
                  request_timeout: float = REQUEST_TIMEOUT_S,
                  max_in_flight: int = MAX_IN_FLIGHT) -> dict[str, Any]:
    """Requests of ``ks`` steps arriving at ``rate`` a second (Poisson) against ``url`` for
    ``seconds`` (or until ``ks`` runs out); the ones in flight then finish, each within
    ``request_timeout``. The figures of streams.summarize ("clients": the connections it
    opened), the rate, the most requests in flight at once and the driver's own CPU."""
    return run_load(lambda: _drive(url, rate, ks, seconds, request_timeout, max_in_flight))
