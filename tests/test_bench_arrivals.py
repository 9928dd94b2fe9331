"""scripts/bench's open-loop driver (benchlib/arrivals.py) against a small streaming server on
loopback (asyncio, in a thread of this process): Poisson arrivals at a fixed rate, keep-alive
connections reused, streamed parts counted and timed, and a server that stops answering bounded
by the requests in flight and the request timeout."""
from __future__ import annotations

import asyncio
import json
import statistics
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from benchlib.arrivals import arrival_gaps, run_open_loop  # noqa: E402

pytestmark = pytest.mark.timeout(60)


class StepServer:
    """Answers POST {"k": k} with k chunks {"step": i}, a millisecond apart; ``hang``: reads
    requests and never answers."""

    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()
        self.loop.close()

    async def _shutdown(self) -> None:
        self.server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length"))
                k = json.loads(await reader.readexactly(length))["k"]
                if self.hang:
                    await asyncio.sleep(3600)
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                for step in range(1, k + 1):
                    part = json.dumps({"step": step}).encode()
                    writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                    await writer.drain()
                    await asyncio.sleep(0.001)
                writer.write(b"0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def __enter__(self) -> StepServer:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/predictions/steps"


@pytest.fixture
def server() -> Iterator[StepServer]:
    with StepServer() as running:
        yield running


def test_arrival_gaps_are_exponential_with_the_rates_mean_and_fixed_by_the_seed() -> None:
    gaps = arrival_gaps(200.0, 20000)
    assert gaps == arrival_gaps(200.0, 20000) and gaps != arrival_gaps(200.0, 20000, seed=1)
    assert statistics.fmean(gaps) == pytest.approx(1 / 200, rel=0.05)
    # exponential: the standard deviation equals the mean
    assert statistics.pstdev(gaps) == pytest.approx(1 / 200, rel=0.05)
    with pytest.raises(ValueError):
        arrival_gaps(0.0, 1)


def test_requests_arrive_at_the_rate_and_reuse_idle_connections(server: StepServer) -> None:
    stats = run_open_loop(server.url, 100.0, [3] * 10000, seconds=1.5)
    assert stats["failed"] == 0, stats["errors"]
    assert 100 <= stats["answered"] <= 200          # about 150 arrivals in 1.5 s
    assert stats["mean_k"] == 3 and stats["rate"] == 100.0
    assert stats["ttfp_p50_ms"] < stats["total_p50_ms"]
    # each answer takes ~3 ms, arrivals come every ~10 ms: a few connections serve them all
    # (one each would be ~150)
    assert stats["clients"] == server.connections and stats["clients"] <= 30
    assert stats["peak_in_flight"] >= 1


def test_a_server_that_stops_answering_bounds_the_requests_in_flight() -> None:
    with StepServer(hang=True) as hung:
        stats = run_open_loop(hung.url, 100.0, [3] * 10000, seconds=0.5, request_timeout=1.0,
                              max_in_flight=5)
    assert stats["answered"] == 0 and stats["peak_in_flight"] == 5
    assert stats["failed"] == stats["requests"] > 5
    assert any("over 5 requests in flight" in error for error in stats["errors"])
    assert any("TimeoutError" in error for error in stats["errors"])
