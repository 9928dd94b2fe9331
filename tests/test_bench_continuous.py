"""The pure parts of scripts/bench's continuous-batching round (no server, no sockets): the
percentiles and ratios, the fixed k sequence, a run's figures, the chunked-answer reader fed from
memory, the round's rows and goals, and steps_handler.py driven as TorchServe 0.12 drives it.

The round itself (both servers, real load) runs with scripts/bench --only continuous.
"""
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from worker.runtime.context import Context
from worker.ts_alias import install_ts_alias

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
install_ts_alias()   # steps_handler imports ts.*: torchd's own, as in a worker
from bench_models.steps_handler import StepsHandler  # noqa: E402
from benchlib import continuous, streams  # noqa: E402
from benchlib.report import medians, metrics_for, table_rows  # noqa: E402


# ---------------------------------------------------------------- percentiles, ratios, k

def test_percentile_interpolates_between_closest_ranks() -> None:
    assert streams.percentile([], 50) is None
    assert streams.percentile([7.0], 99) == 7.0
    assert streams.percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)
    assert streams.percentile(list(range(1, 101)), 99) == pytest.approx(99.01)
    assert streams.percentile([1.0, 2.0], 0) == 1.0 and streams.percentile([1.0, 2.0], 100) == 2.0
    with pytest.raises(ValueError):
        streams.percentile([1.0], 101)


def test_ratio_is_none_when_either_side_is_unknown_or_zero() -> None:
    assert streams.ratio(6.0, 2.0) == 3.0
    assert streams.ratio(None, 2.0) is None
    assert streams.ratio(1.0, None) is None
    assert streams.ratio(1.0, 0.0) is None


def test_k_sequence_is_fixed_by_its_seed_and_in_range() -> None:
    ks = streams.k_sequence(1000)
    assert ks == streams.k_sequence(1000)
    assert ks[:10] == streams.k_sequence(10)
    assert min(ks) == 8 and max(ks) == 64
    assert streams.k_sequence(50, seed=1) != streams.k_sequence(50, seed=2)


def test_summarize_counts_throughput_within_the_window_and_percentiles_over_all() -> None:
    out = streams.Outcome
    outcomes = [out(8, True, 0.001, 0.010, 8, done_at=100.5),
                out(9, True, 0.003, 0.030, 9, done_at=101.0),
                out(10, True, 0.002, 0.020, 10, done_at=102.5),   # finished after the window
                out(11, False, None, None, 0, "HTTP 503: b''", done_at=101.5)]
    stats = streams.summarize(outcomes, 100.0, 102.0, clients=4)
    assert stats["requests"] == 4 and stats["answered"] == 3 and stats["failed"] == 1
    assert stats["errors"] == ["HTTP 503: b''"]
    assert stats["duration_s"] == 2.0 and stats["rps"] == 1.0      # 2 answered in 2 s
    assert stats["parts_per_s"] == pytest.approx(8.5)
    assert stats["ttfp_p50_ms"] == pytest.approx(2.0)
    assert stats["total_p99_ms"] == pytest.approx(29.8)
    assert stats["mean_k"] == pytest.approx(9.0)


# ---------------------------------------------------------------- the answer reader

class _Writer:
    def __init__(self) -> None:
        self.sent = b""

    def write(self, data: bytes) -> None:
        self.sent += data


def _read(answer: bytes, k: int) -> tuple[streams.Outcome, bool, bytes]:
    async def go() -> tuple[streams.Outcome, bool, bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(answer)
        writer = _Writer()
        outcome, reusable = await streams._one(reader, writer, b"POST / HTTP/1.1\r\n\r\n", k)
        return outcome, reusable, writer.sent
    return asyncio.run(go())


def _chunked(*parts: bytes, close: bool = False) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
    head += b"Connection: close\r\n" if close else b""
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
    return head + b"\r\n" + body + b"0\r\n\r\n"


def test_reader_counts_streamed_parts_and_times_the_first() -> None:
    parts = [json.dumps({"step": i}, indent=2).encode() for i in (1, 2, 3)]
    outcome, reusable, sent = _read(_chunked(*parts), 3)
    assert sent.startswith(b"POST / ")
    assert outcome.ok and outcome.parts == 3 and reusable
    assert outcome.first_s is not None and outcome.total_s is not None
    assert 0 <= outcome.first_s <= outcome.total_s


def test_reader_fails_a_short_stream_or_an_error_and_honours_connection_close() -> None:
    outcome, reusable, _ = _read(_chunked(b'{"step": 1}', close=True), 3)
    assert not outcome.ok and outcome.error == "1 parts, expected 3" and not reusable
    answer = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy"
    outcome, reusable, _ = _read(answer, 3)
    assert not outcome.ok and outcome.error.startswith("HTTP 503") and reusable
    answer = b'HTTP/1.1 200 OK\r\nContent-Length: 24\r\n\r\n{"step": 1}{"step": 2}\r\n'
    assert _read(answer, 2)[0].ok


# ---------------------------------------------------------------- the round's rows and goals

def _round(cont_rps: float | None, static_rps: float, cont_p99: float | None,
           static_p99: float) -> dict[str, Any]:
    result: dict[str, Any] = {"cb_rps": cont_rps, "cb_static_rps": static_rps,
                              "cb_ttfp_p99_ms": cont_p99, "cb_static_ttfp_p99_ms": static_p99}
    result.update(continuous.derived(result))
    return result


def test_ratios_are_per_round_and_goals_are_judged_on_their_medians() -> None:
    runs = {"torchd": [_round(300, 100, 10, 40), _round(400, 100, 10, 20)],
            "torchserve": [_round(100, 200, 50, 60), _round(120, 200, 50, 60)]}
    metrics = metrics_for("continuous")
    assert {m.suite for m in metrics} == {"continuous"}
    assert not {m.key for m in metrics_for("standard")} & {m.key for m in metrics}
    rows = {row["metric"]: row for row in table_rows(medians(runs, None, metrics), metrics)}
    assert rows["cb_speedup"]["torchd"] == pytest.approx(3.5)     # median of 3.0 and 4.0
    assert rows["cb_speedup"]["met"] is True                      # >= 3
    assert rows["cb_ttfp_p99_ratio"]["torchd"] == pytest.approx(0.375)   # 0.25, 0.5
    assert rows["cb_ttfp_p99_ratio"]["met"] is False              # <= 1/3
    assert rows["cb_rps"]["ratio"] == pytest.approx(350 / 110)
    assert rows["cb_rps"]["met"] is True                          # torchd >= TorchServe


def test_the_open_loops_figures_have_their_own_keys_and_ratio() -> None:
    assert continuous.key("continuous", "ttfp_p99_ms", "open") == "cb_open_ttfp_p99_ms"
    assert continuous.key("static", "ttfp_p99_ms", "open") == "cb_open_static_ttfp_p99_ms"
    assert continuous.key("static", "rps") == "cb_static_rps"
    result = {"cb_open_ttfp_p99_ms": 2.0, "cb_open_static_ttfp_p99_ms": 40.0}
    assert continuous.derived(result)["cb_open_ttfp_p99_ratio"] == pytest.approx(0.05)
    assert continuous.derived({})["cb_open_ttfp_p99_ratio"] is None
    keys = {m.key for m in metrics_for("continuous")}
    assert {continuous.key(variant, figure, "open") for variant, _ in continuous.VARIANTS
            for figure in continuous.OPEN_FIGURES} <= keys


def test_an_unmeasured_variant_leaves_its_rows_empty_and_says_why() -> None:
    unmeasured = _round(None, 100, None, 20)
    unmeasured["cb_not_measured"] = {"continuous": "check request (k=3) failed: 1 parts"}
    assert unmeasured["cb_speedup"] is None and unmeasured["cb_ttfp_p99_ratio"] is None
    runs = {"torchd": [unmeasured, dict(unmeasured)], "torchserve": [_round(100, 200, 50, 60)]}
    metrics = metrics_for("continuous")
    rows = {row["metric"]: row for row in table_rows(medians(runs, None, metrics), metrics)}
    assert rows["cb_rps"]["torchd"] is None and rows["cb_rps"]["met"] is None
    assert rows["cb_speedup"]["met"] is None
    assert continuous.not_measured(runs) == [
        "torchd continuous batching: not measured in 2 of 2 rounds: check request (k=3) "
        "failed: 1 parts"]


# ---------------------------------------------------------------- the handler

def _handler(continuous_batching: bool) -> tuple[StepsHandler, Context]:
    config = {"batchSize": 32, "continuousBatching": True} if continuous_batching else {}
    ctx = Context("steps", "/tmp", {}, 32, None, "test", model_yaml_config=config)
    handler = StepsHandler()
    handler.initialize(ctx)
    return handler, ctx


def _body(k: int) -> dict[str, Any]:
    return {"body": {"k": k}}


def test_continuous_handler_runs_one_step_per_call_and_stops_each_request_at_k() -> None:
    """TorchServe 0.12's loop: each call is the running batch (a continuing request's data is
    {}), each value a part; a request leaves when its stopping criterion says True."""
    handler, ctx = _handler(True)
    waiting = {"a": 2, "b": 3, "c": 1}
    running: list[str] = []
    parts: dict[str, list[Any]] = {"a": [], "b": [], "c": []}
    arrivals = [["a", "b"], ["c"]]   # a and b come before the first call, c before the second
    for _call in range(10):
        joining = arrivals.pop(0) if arrivals else []
        running += joining
        if not running:
            break
        ctx.begin_batch(running, [{} for _ in running])
        data = [_body(waiting[r]) if r in joining else {} for r in running]
        values = handler.handle(data, ctx)
        assert len(values) == len(running) == len(ctx.stopping_criteria)
        done = []
        for idx, request_id in enumerate(running):
            parts[request_id].append(values[idx])
            if ctx.stopping_criteria[idx](values[idx]):
                done.append(request_id)
        running = [r for r in running if r not in done]
    assert parts == {"a": [{"step": 1}, {"step": 2}], "b": [{"step": i} for i in (1, 2, 3)],
                     "c": [{"step": 1}]}
    assert running == [] and ctx.cache == {}


def test_static_handler_streams_every_step_of_its_batch_in_one_call() -> None:
    handler, ctx = _handler(False)
    sent: list[tuple[dict[int, Any], dict[int, str]]] = []
    ctx.stream_writer = lambda ret, id_map, message, code: sent.append((dict(ret), id_map))
    ctx.begin_batch(["a", "b"], [{}, {}])
    last = handler.handle([_body(2), {"body": json.dumps({"k": 4}).encode()}], ctx)
    assert last == [{"step": 2}, {"step": 4}]
    streamed: dict[str, list[Any]] = {"a": [], "b": []}
    for ret, id_map in sent:
        for idx, request_id in id_map.items():
            streamed[request_id].append(ret[idx])
    assert streamed == {"a": [{"step": 1}], "b": [{"step": i} for i in (1, 2, 3)]}
    assert ctx.cache == {}


def test_handler_refuses_a_body_without_k() -> None:
    handler, ctx = _handler(False)
    ctx.stream_writer = lambda *args: None
    ctx.begin_batch(["a"], [{}])
    with pytest.raises(ValueError, match="positive int"):
        handler.handle([{"body": {"steps": 3}}], ctx)
