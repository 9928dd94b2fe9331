"""One round: every measurement of one server, in order."""
from __future__ import annotations

import json
import statistics
from typing import Any

from bench_models.image_handler import sample_body as image_body
from bench_models.make_mlp import sample_input

from . import BenchError, compiled, continuous, llm
from . import grpc_load
from .load import NOISY_CPU_PERCENT, Load, _cpu_seconds
from .servers import Server, http, live_processes


def check_answer(server: Server, model: str) -> None:
    body = {"noop": "{}", "image": image_body()}.get(model) or json.dumps(sample_input())
    status, text, _ = http("POST", f"{server.inference}/predictions/{model}", body.encode(),
                           timeout=60)
    answer = json.loads(text) if status == 200 else None
    if model == "noop":
        ok = answer == {"ok": 1}
    elif model == "image":
        ok = isinstance(answer, dict) and isinstance(answer.get("mean"), float)
    else:
        ok = isinstance(answer, list) and len(answer) == 10
    if not ok:
        raise BenchError(f"{server.label}: unexpected answer from {model}: {status} {text[:200]}")


def memory(server: Server, model: str) -> dict[str, float]:
    """Median worker USS, frontend RSS, and the PSS summed over the whole server tree.

    The sum of PSS is the tree's real footprint: pages shared by several processes (torch's, once
    imported by torchd's zygote, or shared libraries) count once, split between them; summed USS
    would leave them out.
    """
    mb = 1024 * 1024
    frontend = server.frontend()
    workers = server.remember(live_processes(server.worker_pids(model)))
    if not workers:
        raise BenchError(f"{server.label}: no worker processes found for {model}")
    tree = server.remember([frontend, *frontend.children(recursive=True)])
    return {"worker_uss_mb": statistics.median(p.memory_full_info().uss for p in workers) / mb,
            "frontend_rss_mb": frontend.memory_info().rss / mb,
            "total_pss_mb": sum(p.memory_full_info().pss for p in tree) / mb,
            "workers_measured": len(workers)}


def latency_and_throughput(server: Server, model: str, load: Load) -> dict[str, Any]:
    url = f"{server.inference}/predictions/{model}"
    check_answer(server, model)
    busy = load.measure(url, model, 16, frontend=server.frontend())
    single = load.measure(url, model, 1)
    return {f"{model}_rps": busy["rps"], f"{model}_p50_ms": single["p50_us"] / 1000,
            f"{model}_p99_ms": single["p99_us"] / 1000, f"{model}_frontend_us": busy["frontend_us"],
            f"{model}_wrk": {"c16": busy, "c1": single}}


def image_scaling(server: Server, load: Load) -> dict[str, Any]:
    """The same decode-heavy handler on 1 worker, then 2: how well workers share the CPUs."""
    url = f"{server.inference}/predictions/image"
    server.register("image", workers=1)
    check_answer(server, "image")
    one = load.measure(url, "image", 16)
    server.scale("image", 2)
    two = load.measure(url, "image", 16)
    server.unregister("image")
    return {"image1_rps": one["rps"], "image2_rps": two["rps"],
            "image_scaling": two["rps"] / max(one["rps"], 1e-9),
            "image_wrk": {"w1": one, "w2": two}}


def grpc_noop(server: Server, load: Load, callers: int = 16) -> dict[str, Any]:
    """The no-op model over gRPC: ``callers`` closed loops for the wrk runs' duration, and the
    frontend's CPU per request."""
    frontend = server.frontend()
    before = _cpu_seconds(frontend)
    stats = grpc_load.measure(server.grpc_inference_port, "noop", callers, load.duration)
    stats["frontend_us"] = (_cpu_seconds(frontend) - before) / max(stats["requests"], 1) * 1e6
    if stats["failed"]:
        print(f"  warning: {stats['failed']} gRPC calls failed", flush=True)
    return {"grpc_noop_rps": stats["rps"], "grpc_frontend_us": stats["frontend_us"],
            "grpc_noop_load": stats}


def round_summary(result: dict[str, Any]) -> str:
    """One line per part of a round's headline numbers, so drift between rounds shows as it
    happens."""
    lines = []
    if "noop_rps" in result:
        lines.append(standard_summary(result))
    if "cb_rps" in result:
        lines.append(continuous.summary(result))
    if "llm_speedup" in result:
        lines.append(llm.summary(result))
    if "compile_scale_s" in result:
        lines.append(compiled.summary(result))
    return "\n   ".join(lines)


def standard_summary(result: dict[str, Any]) -> str:
    return (f"no-op {result['noop_rps']:.0f} req/s, MLP {result['mlp_rps']:.0f} req/s, "
            f"batch 8 {result['batch_rps']:.0f} req/s, p50 no-op {result['noop_p50_ms']:.2f} ms, "
            f"MLP {result['mlp_p50_ms']:.2f} ms, frontend {result['frontend_us']:.0f} us/req, "
            f"image x{result['image_scaling']:.2f}")


def chaos_summary(result: dict[str, Any]) -> str:
    redispatched = result["chaos_redispatched"]
    return (f"{result['chaos_kills']} kills, {result['chaos_requests']:.0f} requests, "
            f"{result['chaos_failed']:.0f} failed, slowest {result['chaos_slowest_ms']:.0f} ms, "
            f"{result['chaos_timeouts']:.0f} wrk timeouts (over 1 s), re-dispatched "
            + ("-" if redispatched is None else f"{redispatched:.0f}"))


def measure_round(server: Server, load: Load, others_cpu: float,
                  suite: str = "all") -> dict[str, Any]:
    """One round of ``suite``: "standard" (standard_round), "continuous" (the
    continuous-batching round, benchlib/continuous.py), "llm" (the LLM round, benchlib/llm.py),
    "compiled" (benchlib/compiled.py) or "all" (the four, in that order)."""
    # Other work on the machine skews every number: record it, and say so when it is large.
    result: dict[str, Any] = {"foreign_cpu_percent": others_cpu}
    if others_cpu > NOISY_CPU_PERCENT:
        print(f"  warning: {others_cpu:.0f}% of the CPUs busy with other processes before this "
              "round: numbers will be noisy", flush=True)
    if suite in ("all", "standard"):
        result.update(standard_round(server, load))
    if suite in ("all", "continuous"):
        result.update(continuous.continuous_round(server, load))
    if suite in ("all", "llm"):
        result.update(llm.llm_round(server, load))
    if suite in ("all", "compiled"):
        result.update(compiled.compiled_round(server, load))
    result["server_start_s"] = server.start_s
    return result


def standard_round(server: Server, load: Load) -> dict[str, Any]:
    result: dict[str, Any] = {}
    print(f"{server.label}: worker start", flush=True)
    result["register_s"] = server.register("noop", workers=1)
    result["scale_s"] = server.scale("noop", 5)
    server.scale("noop", 2)
    print(f"{server.label}: no-op load", flush=True)
    result.update(latency_and_throughput(server, "noop", load))
    result["frontend_us"] = result["noop_frontend_us"]
    if server.name == "torchd":   # TorchServe's gRPC is not compared (issue 16: optional)
        print(f"{server.label}: no-op load over gRPC", flush=True)
        result.update(grpc_noop(server, load))
    server.unregister("noop")
    print(f"{server.label}: MLP load", flush=True)
    server.register("mlp", workers=2)
    result.update(latency_and_throughput(server, "mlp", load))
    result.update(memory(server, "mlp"))
    server.unregister("mlp")
    print(f"{server.label}: MLP batch 8", flush=True)
    server.register("mlp", workers=2, batch_size=8, max_batch_delay=5)
    check_answer(server, "mlp")
    batch = load.measure(f"{server.inference}/predictions/mlp", "mlp", 64)
    result.update(batch_rps=batch["rps"], batch_p99_ms=batch["p99_us"] / 1000, batch_wrk=batch)
    result["idle_gap_ms"] = server.idle_gap_ms("mlp")
    server.unregister("mlp")
    print(f"{server.label}: JPEG decode + conv, 1 then 2 workers", flush=True)
    result.update(image_scaling(server, load))
    return result
