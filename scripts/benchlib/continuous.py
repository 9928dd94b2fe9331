"""The continuous-batching round: a step-wise generation handler (bench_models/steps_handler.py)
served with continuous batching and with static batching, under 32 closed-loop streaming clients.

Both variants are the same handler with batchSize 32, maxBatchDelay 5 and 1 worker; only the
archive's model-config.yaml differs (``continuousBatching: true`` or not). Each request asks for
k steps, k from 8..64 in a fixed seeded sequence (the same for every server and variant), and is
answered with k streamed parts. Figures per variant: requests/s, time to the first part and to
the whole answer (p50, p99). Per round, the continuous / static ratios of requests/s and of the
first part's p99 are taken (the two variants run back to back on the same server).

Then both variants again under an open loop (benchlib/arrivals.py): requests arrive at random at
half the rate the static variant sustained in its closed loop, so a request of the static
variant usually arrives while a batch runs and waits for its end, as a shared endpoint's clients
do; the closed loop of 32 clients, where every request of a static batch arrives together, is
static batching's best case. Figures: the first part and the whole answer, p50 and p99, and the
continuous / static ratio of the first part's p99.

A variant the server does not serve correctly (its check request is refused, or answered with
the wrong number of parts) is left unmeasured, with the reason, rather than failing the bench:
the round then reports what it could measure.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .arrivals import run_open_loop
from .load import NOISY_CPU_PERCENT, CpuMeter, Load
from .servers import SETTLE_S, Server
from .streams import (K_RANGE, K_SEED, k_sequence, not_measured_lines, ratio, run_streams,
                      shown)

CLIENTS = 32
BATCH_SIZE = 32
MAX_BATCH_DELAY_MS = 5
MAX_REQUESTS = 200_000      # per run: a bound besides the duration
CHECK_K = 3
CHECK_TIMEOUT_S = 15.0
# (variant, model name): the archives environment.build_archives makes from steps_handler.py
VARIANTS = (("continuous", "steps_cb"), ("static", "steps"))
# the figures kept per variant; the static variant's keys get "static_" after "cb_"
FIGURES = ("rps", "ttfp_p50_ms", "ttfp_p99_ms", "total_p50_ms", "total_p99_ms")
# The open loop's arrival rate, as a share of the static variant's closed-loop req/s.
OPEN_LOOP_SHARE = 0.5
# its figures per variant: "cb_open_" or "cb_open_static_" before them
OPEN_FIGURES = ("ttfp_p50_ms", "ttfp_p99_ms", "total_p99_ms")
Drive = Callable[[str, float], dict[str, Any]]   # (url, seconds) -> a run's figures

_KS = k_sequence(MAX_REQUESTS)


def describe() -> dict[str, Any]:
    """The round's settings, for the report's machine section."""
    return {"clients": CLIENTS, "batch_size": BATCH_SIZE, "max_batch_delay_ms": MAX_BATCH_DELAY_MS,
            "workers": 1, "k_range": list(K_RANGE), "k_seed": K_SEED,
            "max_requests_per_run": MAX_REQUESTS, "open_loop_share": OPEN_LOOP_SHARE,
            "variants": {variant: model for variant, model in VARIANTS}}


def key(variant: str, figure: str, loop: str = "") -> str:
    """The result's key of a variant's figure; ``loop`` "open" for the open loop's."""
    prefix = f"cb_{loop}_" if loop else "cb_"
    return f"{prefix}{figure}" if variant == "continuous" else f"{prefix}{variant}_{figure}"


def closed_loop(url: str, seconds: float) -> dict[str, Any]:
    return run_streams(url, CLIENTS, _KS, seconds)


def open_loop(rate: float) -> Drive:
    return lambda url, seconds: run_open_loop(url, rate, _KS, seconds)


def check(url: str) -> str | None:
    """One request of CHECK_K steps; None when it is answered with its CHECK_K parts, else why
    not."""
    stats = run_streams(url, 1, [CHECK_K], seconds=CHECK_TIMEOUT_S,
                        request_timeout=CHECK_TIMEOUT_S)
    if stats["answered"] == 1:
        return None
    return "; ".join(stats["errors"]) or "no answer"


def measure_variant(server: Server, load: Load, variant: str, model: str,
                    drive: Drive = closed_loop) -> dict[str, Any]:
    """Register ``model``, check it, warm it up, measure it under ``drive``, unregister it. The
    stats of the measured run, or {"skipped": reason}."""
    server.register(model, workers=1, batch_size=BATCH_SIZE, max_batch_delay=MAX_BATCH_DELAY_MS)
    url = f"{server.inference}/predictions/{model}"
    try:
        problem = check(url)
        if problem is not None:
            return {"skipped": f"check request (k={CHECK_K}) failed: {problem}"}
        if load.warmup:
            drive(url, load.warmup)
            time.sleep(SETTLE_S)
        with CpuMeter(load.servers) as meter:
            stats = drive(url, load.duration)
        stats["foreign_cpu_percent"] = meter.percent
        if meter.percent > NOISY_CPU_PERCENT:
            print(f"  warning: other processes used {meter.percent:.0f}% of the CPUs during this "
                  "run", flush=True)
        if stats["failed"]:
            print(f"  warning: {stats['failed']} of {stats['requests']} {variant} requests "
                  f"failed: {stats['errors']}", flush=True)
        time.sleep(SETTLE_S)
        return stats
    finally:
        server.unregister(model)


def continuous_round(server: Server, load: Load) -> dict[str, Any]:
    round_ = _Round(server, load)
    round_.measure("", f"{CLIENTS} clients", closed_loop, FIGURES)
    rate = round_.result.get(key("static", "rps"))
    if rate:
        round_.result["cb_open_rate"] = rate = OPEN_LOOP_SHARE * rate
        round_.measure("open", f"open loop at {rate:.0f} req/s", open_loop(rate), OPEN_FIGURES)
    result = round_.result
    result.update(derived(result))
    runs = round_.runs
    result["cb_failed"] = sum(stats["failed"] for stats in runs.values()) if runs else None
    result["cb_streams"] = runs
    if round_.notes:
        result["cb_not_measured"] = round_.notes
    return result


class _Round:
    """One server's round: each variant's figures under each loop, its runs, and why a variant
    was not measured."""

    def __init__(self, server: Server, load: Load) -> None:
        self.server, self.load = server, load
        self.result: dict[str, Any] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.notes: dict[str, str] = {}

    def measure(self, loop: str, how: str, drive: Drive, figures: tuple[str, ...]) -> None:
        """Both variants under ``drive``; ``loop`` "" (the closed loop) or "open"."""
        label = self.server.label
        for variant, model in VARIANTS:
            print(f"{label}: steps handler, {variant} batching, {how}", flush=True)
            stats = measure_variant(self.server, self.load, variant, model, drive)
            name = f"{variant}_{loop}" if loop else variant
            if "skipped" in stats:
                self.notes[f"{loop}-loop {variant}" if loop else variant] = stats["skipped"]
                print(f"  {label} {name}: not measured: {stats['skipped']}", flush=True)
                stats = {}
            else:
                self.runs[name] = stats
            for figure in figures:
                self.result[key(variant, figure, loop)] = stats.get(figure)


def derived(result: dict[str, Any]) -> dict[str, float | None]:
    """The round's continuous / static ratios (None where either side is unmeasured)."""
    return {"cb_speedup": ratio(result.get("cb_rps"), result.get("cb_static_rps")),
            "cb_ttfp_p99_ratio": ratio(result.get("cb_ttfp_p99_ms"),
                                       result.get("cb_static_ttfp_p99_ms")),
            "cb_open_ttfp_p99_ratio": ratio(result.get("cb_open_ttfp_p99_ms"),
                                            result.get("cb_open_static_ttfp_p99_ms"))}


def summary(result: dict[str, Any]) -> str:
    return (f"continuous {shown(result.get('cb_rps'), '.0f')} req/s "
            f"(first part p99 {shown(result.get('cb_ttfp_p99_ms'), '.1f')} ms), "
            f"static {shown(result.get('cb_static_rps'), '.0f')} req/s "
            f"(p99 {shown(result.get('cb_static_ttfp_p99_ms'), '.1f')} ms), "
            f"x{shown(result.get('cb_speedup'), '.2f')}; open loop first part p99 "
            f"{shown(result.get('cb_open_ttfp_p99_ms'), '.1f')} against "
            f"{shown(result.get('cb_open_static_ttfp_p99_ms'), '.1f')} ms")


def not_measured(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """One line per server and variant left unmeasured in some measured round, with why."""
    return not_measured_lines(runs, "cb_not_measured", lambda variant: f"{variant} batching")
