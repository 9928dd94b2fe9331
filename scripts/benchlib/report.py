"""The metrics and their goals, the medians over rounds, the table and the machine description."""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import psutil

from . import REPO
from . import llm


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool
    goal: float | None  # bound on the ratio torchd / TorchServe, None = informational
    limit: float | None = None   # bound on torchd's own value (goals no ratio can state)
    suite: str = "standard"      # which measurements give it (scripts/bench --suite)
    detail: bool = False         # in the JSON and its suite's own table, not the main table


METRICS = [
    Metric("noop_rps", "no-op throughput, 16 conns (req/s)", True, 2.0),
    # torchd only: the same no-op model over gRPC, 16 closed-loop grpc.aio callers
    Metric("grpc_noop_rps", "no-op over gRPC, 16 callers (req/s)", True, None),
    Metric("grpc_frontend_us", "frontend CPU per gRPC no-op req (us)", False, None),
    Metric("mlp_rps", "MLP throughput, 16 conns (req/s)", True, 1.5),
    Metric("noop_p50_ms", "no-op p50, 1 conn (ms)", False, 0.7),
    Metric("noop_p99_ms", "no-op p99, 1 conn (ms)", False, None),
    Metric("mlp_p50_ms", "MLP p50, 1 conn (ms)", False, 0.7),
    Metric("mlp_p99_ms", "MLP p99, 1 conn (ms)", False, None),
    Metric("batch_rps", "MLP batch 8, 64 conns (req/s)", True, 1.5),
    Metric("batch_p99_ms", "MLP batch 8, 64 conns p99 (ms)", False, None),
    # the frontend process alone (torchd's daemon, TorchServe's JVM), no-op at 16 conns
    Metric("frontend_us", "frontend CPU per no-op request (us)", False, None, limit=150),
    # torchd only: the gap between a worker's result and its next batch (batch 8 run)
    Metric("idle_gap_ms", "worker idle gap at saturation, mean (ms)", False, None, limit=1.0),
    Metric("image1_rps", "JPEG decode + conv, 1 worker, 16 conns (req/s)", True, None),
    Metric("image2_rps", "JPEG decode + conv, 2 workers, 16 conns (req/s)", True, None),
    Metric("image_scaling", "JPEG decode + conv, 2 workers / 1 worker", True, None, limit=1.6),
    Metric("register_s", "register, 1 worker (s)", False, 0.25),
    Metric("scale_s", "scale 1 -> 5 workers (s)", False, 0.2),
    Metric("worker_uss_mb", "worker USS, median (MB)", False, 0.2),
    Metric("frontend_rss_mb", "frontend RSS (MB)", False, 0.3),
    Metric("total_pss_mb", "all server processes PSS (MB)", False, None),
    Metric("server_start_s", "server start to API ready (s)", False, None),
    # once per server after the rounds: MLP, 2 workers, 16 conns, a worker killed every 3 s
    Metric("chaos_requests", "worker killed every 3 s: requests", True, None),
    Metric("chaos_failed", "worker killed every 3 s: failed requests", False, None, limit=0),
    Metric("chaos_slowest_ms", "worker killed every 3 s: slowest (ms)", False, None,
           limit=1000),
    Metric("chaos_redispatched", "worker killed every 3 s: re-dispatched", True, None),
    # the continuous-batching round (benchlib/continuous.py): a step-wise generation handler,
    # batch 32, 1 worker, 32 streaming clients, k steps per request (8..64); "static" is the
    # same handler without continuousBatching, running all its batch's steps in one call
    Metric("cb_rps", "steps, continuous batching, 32 clients (req/s)", True, 1.0,
           suite="continuous"),
    Metric("cb_static_rps", "steps, static batch 32, 32 clients (req/s)", True, None,
           suite="continuous"),
    Metric("cb_speedup", "steps: continuous / static req/s", True, None, limit=3.0,
           suite="continuous"),
    Metric("cb_ttfp_p50_ms", "steps, continuous: first part p50 (ms)", False, None,
           suite="continuous"),
    Metric("cb_ttfp_p99_ms", "steps, continuous: first part p99 (ms)", False, None,
           suite="continuous"),
    Metric("cb_static_ttfp_p50_ms", "steps, static: first part p50 (ms)", False, None,
           suite="continuous"),
    Metric("cb_static_ttfp_p99_ms", "steps, static: first part p99 (ms)", False, None,
           suite="continuous"),
    Metric("cb_ttfp_p99_ratio", "steps: first part p99, continuous / static", False, None,
           limit=1 / 3, suite="continuous"),
    Metric("cb_total_p50_ms", "steps, continuous: whole answer p50 (ms)", False, None,
           suite="continuous"),
    Metric("cb_total_p99_ms", "steps, continuous: whole answer p99 (ms)", False, None,
           suite="continuous"),
    Metric("cb_static_total_p50_ms", "steps, static: whole answer p50 (ms)", False, None,
           suite="continuous"),
    Metric("cb_static_total_p99_ms", "steps, static: whole answer p99 (ms)", False, None,
           suite="continuous"),
    # the same two variants under an open loop: Poisson arrivals at half the static variant's
    # closed-loop req/s (each server's own), where a static request waits for the batch it missed
    Metric("cb_open_rate", "steps, open loop: arrivals (req/s)", True, None, suite="continuous"),
    Metric("cb_open_ttfp_p50_ms", "steps, open loop, continuous: first part p50 (ms)", False,
           None, suite="continuous"),
    Metric("cb_open_ttfp_p99_ms", "steps, open loop, continuous: first part p99 (ms)", False,
           None, suite="continuous"),
    Metric("cb_open_static_ttfp_p50_ms", "steps, open loop, static: first part p50 (ms)", False,
           None, suite="continuous"),
    Metric("cb_open_static_ttfp_p99_ms", "steps, open loop, static: first part p99 (ms)", False,
           None, suite="continuous"),
    Metric("cb_open_ttfp_p99_ratio", "steps, open loop: first part p99, continuous / static",
           False, None, suite="continuous"),
    Metric("cb_open_total_p99_ms", "steps, open loop, continuous: whole answer p99 (ms)", False,
           None, suite="continuous"),
    Metric("cb_open_static_total_p99_ms", "steps, open loop, static: whole answer p99 (ms)",
           False, None, suite="continuous"),
    Metric("cb_failed", "steps: failed requests (both variants, both loops)", False, None,
           limit=0, suite="continuous"),
]


def llm_metrics() -> list[Metric]:
    """The LLM round's (benchlib/llm.py): every figure of every point (details, shown in its
    grid), the headline figures at 32 streams, and the goals."""
    labels = dict(llm.GRID_COLUMNS)
    found = []
    for variant in ("continuous", "static"):
        for clients in llm.CLIENT_COUNTS:
            for figure in llm.FIGURES:
                headline = clients == llm.GOAL_CLIENTS and figure in (
                    "tokens_per_s", "ttft_p99_ms", "frontend_us_per_token")
                limit = (20.0 if (variant, clients, figure) == (
                    "continuous", llm.GOAL_CLIENTS, "frontend_us_per_token") else None)
                found.append(Metric(
                    llm.key(variant, clients, figure),
                    f"LLM {'continuous' if variant == 'continuous' else 'without CB'}, "
                    f"{clients} streams: {labels[figure]}",
                    figure == "tokens_per_s", None, limit=limit, suite="llm",
                    detail=not headline))
    return found + [
        Metric("llm_speedup", f"LLM tokens/s, {llm.GOAL_CLIENTS} streams: continuous / without",
               True, None, limit=4.0, suite="llm"),
        Metric("llm_ttft_p99_ratio", f"LLM TTFT p99, {llm.GOAL_CLIENTS} streams: continuous / "
               "without", False, None, limit=0.25, suite="llm"),
        Metric("llm_failed", "LLM: failed requests (every variant)", False, None, limit=0,
               suite="llm"),
    ]


# the compiled round (benchlib/compiled.py): a torch.compile'd MLP's start and scale-up, its
# throughput against eager, and 4 workers of a preloaded 196 MiB model
COMPILED_METRICS = [
    Metric("compile_first_answer_s", "compiled MLP: register to first answer (s)", False, None,
           suite="compiled"),
    Metric("compile_scale_s", "compiled MLP: scale 1 -> 3 until all answered compiled (s)",
           False, None, suite="compiled"),
    Metric("compile_scale_ratio", "compiled MLP: scale 1 -> 3 / register to first answer",
           False, None, limit=0.5, suite="compiled"),
    Metric("compiled_rps", "compiled MLP, 2 workers, 16 conns (req/s)", True, None,
           suite="compiled"),
    Metric("eager_rps", "eager MLP, 2 workers, 16 conns (req/s)", True, None, suite="compiled"),
    Metric("compiled_speedup", "MLP req/s: compiled / eager", True, None, suite="compiled"),
    Metric("compiled_max_abs_diff", "MLP: |compiled - eager| answer, max", False, None,
           limit=1e-4, suite="compiled"),
    Metric("preload_workers_uss_mb", "196 MiB model, 4 workers: sum of USS (MB)", False, None,
           suite="compiled"),
    Metric("preload_uss_ratio", "196 MiB model, 4 workers: sum of USS / weights", False, None,
           limit=1.3, suite="compiled"),
    Metric("preload_worker_uss_mb", "196 MiB model: worker USS, median (MB)", False, None,
           suite="compiled"),
    Metric("preload_pss_mb", "196 MiB model: PSS of workers and template (MB)", False, None,
           suite="compiled"),
]

METRICS += llm_metrics() + COMPILED_METRICS
SUITES = ("standard", "continuous", "llm", "compiled")


def metrics_for(suite: str) -> list[Metric]:
    """The metrics a --suite measures ("all": every one)."""
    return [m for m in METRICS if suite in ("all", m.suite)]


# ---------------------------------------------------------------- report

def medians(runs: dict[str, list[dict[str, Any]]],
            once: dict[str, dict[str, Any]] | None = None,
            metrics: list[Metric] | None = None) -> dict[str, dict[str, float | None]]:
    """Per server and metric, the median over rounds (None: the server has no such figure);
    ``once`` holds figures measured once per server (the chaos run), taken as they are.
    A ratio measured per round (cb_speedup) is the median of its rounds' ratios."""
    def median(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    once = once or {}
    return {name: {m.key: median([r.get(m.key) for r in [*rounds, once.get(name, {})]])
                   for m in (METRICS if metrics is None else metrics)}
            for name, rounds in runs.items() if rounds}


def table_rows(med: dict[str, dict[str, float | None]],
               metrics: list[Metric] | None = None) -> list[dict[str, Any]]:
    rows = []
    for m in METRICS if metrics is None else metrics:
        ours, theirs = med.get("torchd", {}).get(m.key), med.get("torchserve", {}).get(m.key)
        ratio = ours / theirs if ours is not None and theirs else None
        met = None
        if ratio is not None and m.goal is not None:
            met = ratio >= m.goal if m.higher_is_better else ratio <= m.goal
        elif ours is not None and m.limit is not None:
            met = ours >= m.limit if m.higher_is_better else ours <= m.limit
        rows.append({"metric": m.key, "label": m.label, "torchd": ours, "torchserve": theirs,
                     "ratio": ratio, "goal": m.goal, "limit": m.limit,
                     "goal_op": ">=" if m.higher_is_better else "<=", "met": met,
                     "detail": m.detail})
    return rows


def foreign_cpu_summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """How busy other processes kept the CPUs during the measured wrk runs."""
    seen = [stats["foreign_cpu_percent"] for rounds in runs.values() for result in rounds
            for stats in wrk_stats(result)]
    return {"median": statistics.median(seen) if seen else 0.0, "max": max(seen, default=0.0)}


def wrk_stats(result: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for key, value in result.items():
        if key.endswith(("_wrk", "_streams")):
            found.extend(value.values() if "requests" not in value else [value])
    return found


def print_table(rows: list[dict[str, Any]]) -> None:
    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:.3g}" if value < 10 else f"{value:.0f}"

    rows = [row for row in rows if not row.get("detail")]
    width = max([36, *(len(row["label"]) for row in rows)])
    print(f"\n{'metric':<{width}} {'torchd':>9} {'TorchServe':>11} {'ratio':>7} {'goal':>7}  met")
    for row in rows:
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        goal = "-" if row["goal"] is None else f"{row['goal_op']}{row['goal']:g}x"
        if row["limit"] is not None:   # torchd's own value, not a ratio
            limit = row["limit"]
            goal = row["goal_op"] + (f"{limit:.3g}" if abs(limit) < 1 else f"{limit:g}")
        met = {True: "yes", False: "NO", None: "-"}[row["met"]]
        print(f"{row['label']:<{width}} {num(row['torchd']):>9} {num(row['torchserve']):>11} "
              f"{ratio:>7} {goal:>7}  {met}")


def machine_info(args: argparse.Namespace, java: str | None) -> dict[str, Any]:
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            check=False, capture_output=True, text=True, timeout=30).stdout.strip()
    return {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": " ".join(["scripts/bench", *sys.argv[1:]]), "commit": commit,
            "cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(), "python": platform.python_version(), "java": java,
            "duration_s": args.duration, "rounds": args.rounds,
            "warmup_rounds": args.warmup_rounds, "order": "A B A B",
            "servers": args.servers, "suite": args.suite}
