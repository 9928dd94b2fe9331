"""Smoke test of scripts/bench: both servers, 1 s runs, one warm-up round and one measured.

It installs and starts TorchServe (Java), so it is opt-in and never part of `make test`:
    TORCHD_BENCH_SMOKE=1 .venv/bin/python -m pytest -q tests/test_bench_smoke.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "scripts" / "bench"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("TORCHD_BENCH_SMOKE") != "1",
                       reason="starts TorchServe; set TORCHD_BENCH_SMOKE=1 to run"),
]


def processes_marked(mark: str) -> list[int]:
    """Pids of live processes whose environment carries ``mark`` (inherited from the bench)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("TORCHD_BENCH_SMOKE_MARK") == mark:
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def run_bench(args: list[str], env: dict[str, str], timeout: float) -> tuple[int, str, str]:
    """Run scripts/bench; on timeout SIGTERM it, so that it stops its servers itself."""
    proc = subprocess.Popen([sys.executable, str(BENCH), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        err += f"\n(bench timed out after {timeout} s)"
    return proc.returncode, out, err


def kill_marked(mark: str) -> list[int]:
    """Kill (by pid) whatever the bench left behind, and return those pids."""
    left = processes_marked(mark)
    for pid in left:
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            continue
    return left


@pytest.mark.timeout(900)
def test_quick_bench_measures_both_servers_and_leaves_nothing_running(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    mark = uuid.uuid4().hex
    env = {**os.environ, "TORCHD_BENCH_SMOKE_MARK": mark}
    try:
        args = ["--quick", "--warmup-rounds", "1", "--out", str(out)]
        code, stdout, stderr = run_bench(args, env, timeout=780)
    finally:
        leftovers = kill_marked(mark)
    assert code == 0, stdout[-2000:] + stderr[-3000:]
    assert leftovers == []
    report = json.loads(out.read_text())
    for server in ("torchd", "torchserve"):
        med = report["medians"][server]
        assert med["noop_rps"] > 0 and med["mlp_rps"] > 0 and med["batch_rps"] > 0
        assert 0 < med["register_s"] < 120 and 0 < med["scale_s"] < 120
        assert med["worker_uss_mb"] > 0 and med["frontend_rss_mb"] > 0
        # the warm-up round is kept apart: it never enters the medians
        assert len(report["warmup_runs"][server]) == 1 and len(report["runs"][server]) == 1
        assert med["noop_rps"] == report["runs"][server][0]["noop_rps"]
    assert "warm-up round 1/1 (not recorded)" in stdout
    # the continuous-batching round: both variants on TorchServe; torchd's static one, and its
    # continuous one measured or said to be not measured (with why); then the open loop
    for server in ("torchd", "torchserve"):
        med = report["medians"][server]
        assert med["cb_static_rps"] > 0 and med["cb_static_ttfp_p99_ms"] > 0, med
        streams = report["runs"][server][0]["cb_streams"]
        assert all(run["failed"] == 0 for variant, run in streams.items()
                   if not variant.endswith("_open")), streams
        # TorchServe's continuous batching may fall behind the open loop (its full queue's
        # 503s); torchd's never fails one
        assert server != "torchd" or med["cb_failed"] == 0, streams
        assert med["cb_open_rate"] == pytest.approx(0.5 * med["cb_static_rps"])
        assert med["cb_open_static_ttfp_p99_ms"] > 0, med
        continuous_measured = med["cb_rps"] is not None
        assert continuous_measured or server == "torchd", med
        assert continuous_measured == (med["cb_speedup"] is not None)
        noted = "cb_not_measured" in report["runs"][server][0]
        assert noted != continuous_measured
        assert noted == (f"{server} continuous batching: not measured" in stdout)
    assert report["machine"]["continuous"]["clients"] == 32
    # the LLM round: torchd with and without continuous batching, TorchServe's own handler;
    # every point measured, nothing failed
    for server, variants in (("torchd", ("continuous", "static")), ("torchserve", ("continuous",))):
        med = report["medians"][server]
        for variant in variants:
            for clients in (1, 8, 32):
                key = f"llm_{variant}_c{clients}_tokens_per_s"
                assert med[key] and med[key] > 0, (key, report["runs"][server][0].get(
                    "llm_not_measured"))
        assert med["llm_failed"] == 0
        assert (med["llm_speedup"] is None) == (server == "torchserve")
    assert report["machine"]["llm"]["max_tokens"] == 64
    for server in ("torchd", "torchserve"):   # the chaos run, once per server
        chaos = report["chaos"][server]
        assert chaos["chaos_kills"] >= 1 and chaos["chaos_requests"] > 0, chaos
        assert (chaos["chaos_redispatched"] is None) == (server == "torchserve"), chaos
    check_goal_bookkeeping(report["table"], report["medians"])
    assert "ratio" in stdout
    for server, seen in report["processes"].items():
        assert seen, f"no {server} processes recorded"
        assert [pid for pid, created in seen if alive(pid, created)] == []


def check_goal_bookkeeping(table: list[dict], medians: dict[str, dict[str, float]]) -> None:
    """Every metric has a row; its ratio is torchd / TorchServe from the medians; a row with a
    ratio goal says whether the ratio meets it, a row with a limit whether torchd's own value
    does, and a row with neither says nothing."""
    assert [row["metric"] for row in table] == list(medians["torchd"])

    def meets(value: float, bound: float, op: str) -> bool:
        return value >= bound if op == ">=" else value <= bound

    for row in table:
        ours, theirs = medians["torchd"][row["metric"]], medians["torchserve"][row["metric"]]
        assert (row["torchd"], row["torchserve"]) == (ours, theirs), row
        assert row["goal_op"] in (">=", "<="), row
        if ours is None or not theirs:
            assert row["ratio"] is None, row
        else:
            assert row["ratio"] == pytest.approx(ours / theirs), row
        if row["goal"] is not None and row["ratio"] is not None:
            assert row["met"] is meets(row["ratio"], row["goal"], row["goal_op"]), row
        elif row["limit"] is not None and ours is not None:
            assert row["met"] is meets(ours, row["limit"], row["goal_op"]), row
        else:
            assert row["met"] is None, row
    goals = [row for row in table if row["goal"] is not None]
    assert goals and {row["metric"] for row in goals} >= {"noop_rps", "mlp_rps"}
    limits = {row["metric"] for row in table if row["limit"] is not None}
    assert limits >= {"frontend_us", "idle_gap_ms", "image_scaling"}


def alive(pid: int, created: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
