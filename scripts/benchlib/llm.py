"""The LLM round: the tiny causal LM (examples/tiny_llm.py) streamed to 1, 8 and 32 concurrent
clients, 64 tokens each, greedy.

torchd serves it with its built-in ``text_generation`` handler twice: with continuous batching
(batchSize 32) and without (``continuousBatching: false``, batchSize 1: one request at a time,
its tokens streamed as they come), through the OpenAI completions route, ``ignore_eos`` so every
answer has exactly 64 tokens. TorchServe serves it with its own continuous-batching streaming
handler (benchlib/ts_llm_handler.py, batchSize 32); that handler has no mode without
continuous batching, and stops a sequence at EOS (its answers may be shorter).

Figures per variant and concurrency (benchlib/token_streams.py): output tokens/s, time to first
token and time per output token (p50, p99), and the frontend's CPU per generated token (the
daemon process alone for torchd, not its workers; TorchServe's JVM), from its user + system
time over the measured run and its drain, divided by the tokens streamed in that time.
Per round, at 32 clients: tokens/s continuous / without, and TTFT p99 continuous / without.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from .environment import LLM_CONFIGS, LLM_MAX_BATCH_DELAY_MS, LLM_NOT_BUILT
from .load import NOISY_CPU_PERCENT, CpuMeter, Load, _cpu_seconds
from .servers import SETTLE_S, Server
from .streams import not_measured_lines, ratio, shown
from .token_streams import StreamTarget, run_token_streams

CLIENT_COUNTS = (1, 8, 32)
MAX_TOKENS = 64
CHECK_TOKENS = 4
CHECK_TIMEOUT_S = 60.0
MAX_REQUESTS = 100_000        # per run: a bound besides the duration
# Prompts of a few lengths, taken in turn: sequences of a running batch differ in length, as
# they do in service (a padded batch costs what its longest member does).
PROMPTS = ("the quick brown fox",
           "hello world, this is torchd serving a tiny model",
           "a server answers requests",
           "continuous batching lets new sequences join between decode steps, and every stream "
           "gets the same tokens it would get alone")
FIGURES = ("tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms",
           "frontend_us_per_token")
# the headline: the goals are judged at the most streams
GOAL_CLIENTS = CLIENT_COUNTS[-1]


@dataclass(frozen=True)
class Variant:
    name: str        # "continuous" or "static" (the same handler without continuous batching)
    model: str       # its archive (environment.LLM_ARCHIVES)


VARIANTS = {"torchd": (Variant("continuous", "llm_cb"), Variant("static", "llm")),
            "torchserve": (Variant("continuous", "ts_llm_cb"),)}
LABELS = {"continuous": "continuous batching", "static": "without continuous batching"}


def key(variant: str, clients: int, figure: str) -> str:
    return f"llm_{variant}_c{clients}_{figure}"


def describe() -> dict[str, Any]:
    """The round's settings, for the report's machine section."""
    return {"clients": list(CLIENT_COUNTS), "max_tokens": MAX_TOKENS, "decoding": "greedy",
            "prompts": list(PROMPTS), "workers": 1,
            "max_batch_delay_ms": LLM_MAX_BATCH_DELAY_MS,
            "variants": {server: {v.name: {"model": v.model, **LLM_CONFIGS[v.model]}
                                  for v in variants} for server, variants in VARIANTS.items()},
            "tpot": "per answer: (last token - first token) / (tokens - 1)",
            "frontend_cpu": "user + system of the daemon process (torchd) or the JVM "
                            "(TorchServe) over the run and its drain / tokens streamed",
            "max_requests_per_run": MAX_REQUESTS}


def target(server: Server, model: str, max_tokens: int) -> StreamTarget:
    """How ``server`` is asked for ``max_tokens`` tokens of ``model``."""
    if server.name == "torchserve":
        # TorchServe hands a JSON-typed body to the handler decoded; this handler json.loads
        # the raw body itself, as TorchServe's own test sends it (no Content-Type).
        bodies = [json.dumps({"prompt": p, "max_new_tokens": max_tokens}).encode()
                  for p in PROMPTS]
        return StreamTarget(f"{server.inference}/predictions/{model}", bodies, "parts",
                            expected_tokens=None, content_type=None)
    # include_usage: the last chunk says how many tokens the answer has (token_streams.py)
    bodies = [json.dumps({"model": model, "prompt": p, "max_tokens": max_tokens, "stream": True,
                          "stream_options": {"include_usage": True}, "temperature": 0,
                          "ignore_eos": True}).encode() for p in PROMPTS]
    # TorchServe's launcher's route: /predictions/{model}/{version}/{url_path}
    return StreamTarget(f"{server.inference}/predictions/{model}/1.0/v1/completions", bodies,
                        "sse", expected_tokens=max_tokens)


def check(server: Server, model: str) -> str | None:
    """One request of CHECK_TOKENS tokens; None when it is answered well, else why not."""
    stats = run_token_streams(target(server, model, CHECK_TOKENS), 1, CHECK_TIMEOUT_S, 1,
                              request_timeout=CHECK_TIMEOUT_S)
    if stats["answered"] == 1:
        return None
    return "; ".join(stats["errors"]) or "no answer"


def measure_point(server: Server, load: Load, model: str, clients: int) -> dict[str, Any]:
    """A warm-up run, then the measured one, at ``clients`` streams."""
    stream = target(server, model, MAX_TOKENS)
    if load.warmup:
        run_token_streams(stream, clients, load.warmup, MAX_REQUESTS)
        time.sleep(SETTLE_S)
    frontend = server.frontend()
    before = _cpu_seconds(frontend)
    with CpuMeter(load.servers) as meter:
        stats = run_token_streams(stream, clients, load.duration, MAX_REQUESTS)
    stats["frontend_cpu_s"] = _cpu_seconds(frontend) - before
    stats["frontend_us_per_token"] = (stats["frontend_cpu_s"] / stats["tokens"] * 1e6
                                      if stats["tokens"] else None)
    stats["foreign_cpu_percent"] = meter.percent
    if meter.percent > NOISY_CPU_PERCENT:
        print(f"  warning: other processes used {meter.percent:.0f}% of the CPUs during this "
              "run", flush=True)
    if stats["failed"]:
        print(f"  warning: {stats['failed']} of {stats['requests']} requests failed: "
              f"{stats['errors']}", flush=True)
    time.sleep(SETTLE_S)
    return stats


def measure_variant(server: Server, load: Load, variant: Variant) -> dict[str, Any]:
    """Register the variant's model, check it, measure every concurrency, unregister it.
    {clients: stats}, or {"skipped": reason}."""
    if variant.model in LLM_NOT_BUILT:
        return {"skipped": LLM_NOT_BUILT[variant.model]}
    batch_size = int(LLM_CONFIGS[variant.model]["batchSize"])
    server.register(variant.model, workers=1, batch_size=batch_size,
                    max_batch_delay=LLM_MAX_BATCH_DELAY_MS)
    try:
        problem = check(server, variant.model)
        if problem is not None:
            return {"skipped": f"check request ({CHECK_TOKENS} tokens) failed: {problem}"}
        points = {}
        for clients in CLIENT_COUNTS:
            points[clients] = stats = measure_point(server, load, variant.model, clients)
            print(f"   {clients:>2} streams: {point_summary(stats)}", flush=True)
        return points
    finally:
        server.unregister(variant.model)


def llm_round(server: Server, load: Load) -> dict[str, Any]:
    result: dict[str, Any] = {}
    streams: dict[str, dict[int, dict[str, Any]]] = {}
    notes: dict[str, str] = {}
    for variant in VARIANTS.get(server.name, ()):
        print(f"{server.label}: tiny LLM, {LABELS[variant.name]}, {CLIENT_COUNTS} streams",
              flush=True)
        points = measure_variant(server, load, variant)
        if "skipped" in points:
            notes[variant.name] = points["skipped"]
            print(f"  {server.label} {variant.name}: not measured: {points['skipped']}",
                  flush=True)
            continue
        streams[variant.name] = points
        for clients, stats in points.items():
            for figure in FIGURES:
                result[key(variant.name, clients, figure)] = stats.get(figure)
    result.update(derived(result))
    result["llm_failed"] = (sum(s["failed"] for points in streams.values()
                                for s in points.values()) if streams else None)
    # flat, for report.wrk_stats (which reads each run's foreign_cpu_percent)
    result["llm_streams"] = {f"{variant}_c{clients}": stats
                             for variant, points in streams.items()
                             for clients, stats in points.items()}
    if notes:
        result["llm_not_measured"] = notes
    return result


def derived(result: dict[str, Any]) -> dict[str, float | None]:
    """The round's continuous / without ratios at GOAL_CLIENTS streams (None where either side
    is unmeasured)."""
    def both(figure: str) -> tuple[Any, Any]:
        return (result.get(key("continuous", GOAL_CLIENTS, figure)),
                result.get(key("static", GOAL_CLIENTS, figure)))

    return {"llm_speedup": ratio(*both("tokens_per_s")),
            "llm_ttft_p99_ratio": ratio(*both("ttft_p99_ms"))}


def point_summary(stats: dict[str, Any]) -> str:
    return (f"{shown(stats['tokens_per_s'], '.0f')} tokens/s, TTFT p50/p99 "
            f"{shown(stats['ttft_p50_ms'], '.1f')}/{shown(stats['ttft_p99_ms'], '.1f')} ms, "
            f"TPOT p50/p99 {shown(stats['tpot_p50_ms'], '.2f')}/"
            f"{shown(stats['tpot_p99_ms'], '.2f')} ms, "
            f"frontend {shown(stats['frontend_us_per_token'], '.1f')} us/token, "
            f"{stats['answered']} answers, {stats['failed']} failed, "
            f"client CPU {stats['client_cpu_s']:.1f} s")


def summary(result: dict[str, Any]) -> str:
    cont = key("continuous", GOAL_CLIENTS, "tokens_per_s")
    static = key("static", GOAL_CLIENTS, "tokens_per_s")
    cpu = key("continuous", GOAL_CLIENTS, "frontend_us_per_token")
    return (f"LLM at {GOAL_CLIENTS} streams: continuous {shown(result.get(cont), '.0f')} "
            f"tokens/s, without {shown(result.get(static), '.0f')} tokens/s "
            f"(x{shown(result.get('llm_speedup'), '.2f')}), TTFT p99 ratio "
            f"{shown(result.get('llm_ttft_p99_ratio'), '.3f')}, frontend "
            f"{shown(result.get(cpu), '.1f')} us/token")


def not_measured(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """One line per server and variant left unmeasured in some measured round, with why."""
    return not_measured_lines(runs, "llm_not_measured", lambda variant: f"LLM {LABELS[variant]}")


GRID_COLUMNS = (("tokens_per_s", "output tokens/s"), ("ttft_p50_ms", "TTFT p50 (ms)"),
                ("ttft_p99_ms", "TTFT p99 (ms)"), ("tpot_p50_ms", "TPOT p50 (ms)"),
                ("tpot_p99_ms", "TPOT p99 (ms)"),
                ("frontend_us_per_token", "frontend CPU per token (µs)"))
SERVER_LABELS = {"torchd": "torchd", "torchserve": "TorchServe"}


def grid(med: dict[str, dict[str, float | None]]) -> str:
    """Every point of the round's medians as one markdown table: a row per concurrency, server
    and variant."""
    def num(value: float | None) -> str:
        return "–" if value is None else f"{value:.3g}" if value < 100 else f"{value:.0f}"

    lines = ["| streams | server | " + " | ".join(label for _, label in GRID_COLUMNS) + " |",
             "|---|---|" + "---|" * len(GRID_COLUMNS)]
    for clients in CLIENT_COUNTS:
        for server, variants in VARIANTS.items():
            if server not in med:
                continue
            for variant in variants:
                cells = [num(med[server].get(key(variant.name, clients, figure)))
                         for figure, _ in GRID_COLUMNS]
                lines.append(f"| {clients} | {SERVER_LABELS[server]}, {LABELS[variant.name]} | "
                             + " | ".join(cells) + " |")
    return "\n".join(lines)
