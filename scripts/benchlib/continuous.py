"""The continuous-batching round: a step-wise generation handler (bench_models/steps_handler.py)
served with continuous batching and with static batching, under 32 closed-loop streaming clients.

Both variants are the same handler with batchSize 32, maxBatchDelay 5 and 1 worker; only the
archive's model-config.yaml differs (``continuousBatching: true`` or not). Each request asks for
k steps, k from 8..64 in a fixed seeded sequence (the same for every server and variant), and is
answered with k streamed parts. Figures per variant: requests/s, time to the first part and to
the whole answer (p50, p99). Per round, the continuous / static ratios of requests/s and of the
first part's p99 are taken (the two variants run back to back on the same server).

A variant the server does not serve correctly (its check request is refused, or answered with
the wrong number of parts) is left unmeasured, with the reason, rather than failing the bench:
the round then reports what it could measure.
"""
from __future__ import annotations

import time
from typing import Any

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

_KS = k_sequence(MAX_REQUESTS)


def describe() -> dict[str, Any]:
    """The round's settings, for the report's machine section."""
    return {"clients": CLIENTS, "batch_size": BATCH_SIZE, "max_batch_delay_ms": MAX_BATCH_DELAY_MS,
            "workers": 1, "k_range": list(K_RANGE), "k_seed": K_SEED,
            "max_requests_per_run": MAX_REQUESTS,
            "variants": {variant: model for variant, model in VARIANTS}}


def key(variant: str, figure: str) -> str:
    return f"cb_{figure}" if variant == "continuous" else f"cb_{variant}_{figure}"


def check(url: str) -> str | None:
    """One request of CHECK_K steps; None when it is answered with its CHECK_K parts, else why
    not."""
    stats = run_streams(url, 1, [CHECK_K], seconds=CHECK_TIMEOUT_S,
                        request_timeout=CHECK_TIMEOUT_S)
    if stats["answered"] == 1:
        return None
    return "; ".join(stats["errors"]) or "no answer"


def measure_variant(server: Server, load: Load, variant: str, model: str) -> dict[str, Any]:
    """Register ``model``, check it, warm it up, measure it, unregister it. The stats of the
    measured run, or {"skipped": reason}."""
    server.register(model, workers=1, batch_size=BATCH_SIZE, max_batch_delay=MAX_BATCH_DELAY_MS)
    url = f"{server.inference}/predictions/{model}"
    try:
        problem = check(url)
        if problem is not None:
            return {"skipped": f"check request (k={CHECK_K}) failed: {problem}"}
        if load.warmup:
            run_streams(url, CLIENTS, _KS, load.warmup)
            time.sleep(SETTLE_S)
        with CpuMeter(load.servers) as meter:
            stats = run_streams(url, CLIENTS, _KS, load.duration)
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
    result: dict[str, Any] = {}
    runs: dict[str, dict[str, Any]] = {}
    notes: dict[str, str] = {}
    for variant, model in VARIANTS:
        print(f"{server.label}: steps handler, {variant} batching, {CLIENTS} clients", flush=True)
        stats = measure_variant(server, load, variant, model)
        if "skipped" in stats:
            notes[variant] = stats["skipped"]
            print(f"  {server.label} {variant}: not measured: {stats['skipped']}", flush=True)
            stats = {}
        else:
            runs[variant] = stats
        for figure in FIGURES:
            result[key(variant, figure)] = stats.get(figure)
    result.update(derived(result))
    result["cb_failed"] = sum(stats["failed"] for stats in runs.values()) if runs else None
    result["cb_streams"] = runs
    if notes:
        result["cb_not_measured"] = notes
    return result


def derived(result: dict[str, Any]) -> dict[str, float | None]:
    """The round's continuous / static ratios (None where either side is unmeasured)."""
    return {"cb_speedup": ratio(result.get("cb_rps"), result.get("cb_static_rps")),
            "cb_ttfp_p99_ratio": ratio(result.get("cb_ttfp_p99_ms"),
                                       result.get("cb_static_ttfp_p99_ms"))}


def summary(result: dict[str, Any]) -> str:
    return (f"continuous {shown(result.get('cb_rps'), '.0f')} req/s "
            f"(first part p99 {shown(result.get('cb_ttfp_p99_ms'), '.1f')} ms), "
            f"static {shown(result.get('cb_static_rps'), '.0f')} req/s "
            f"(p99 {shown(result.get('cb_static_ttfp_p99_ms'), '.1f')} ms), "
            f"x{shown(result.get('cb_speedup'), '.2f')}")


def not_measured(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """One line per server and variant left unmeasured in some measured round, with why."""
    return not_measured_lines(runs, "cb_not_measured", lambda variant: f"{variant} batching")
