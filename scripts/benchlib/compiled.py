"""The compiled round (issue 26): a torch.compile'd model's start and scale-up, compiled against
eager throughput, and the memory of a preloaded ~200 MB model's workers.

Both servers get the same archives: an MLP (modelFile + state_dict) whose model-config.yaml asks
BaseHandler for ``pt2: {compile: {enable: true, backend: inductor}}``, the same MLP without it,
and a 196 MiB linear layer with ``preloadModel: true`` (torchd's; TorchServe ignores the key).

- **Start and scale**: register the compiled model with 1 worker (synchronous), then time until
  its first compiled answer; scale to 3 (synchronous) and time until all 3 workers have answered
  compiled. torchd compiles before a worker is READY and its later workers load the version's
  compiler cache; TorchServe compiles on each worker's first request.
- **Throughput**: the compiled and the eager model, 2 workers each, 16 wrk connections.
- **Memory**: 4 workers of the preloaded model: the sum of their USS against the weights' size,
  and the PSS of the workers (and torchd's template) together.
"""
from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench_models.big_model import WIDTH
from bench_models.make_weights import sample_row

from . import BenchError
from .environment import run_archiver
from .load import WRK_LUA, Load
from .servers import Server, http, live_processes

ARCHIVES = ("compiled", "eager", "preload")
MODELS_DIR = Path(__file__).resolve().parent.parent / "bench_models"
MIB = 1024 * 1024
WEIGHTS_MB = WIDTH * WIDTH * 4 / MIB
SCALED_WORKERS = 3
PRELOAD_WORKERS = 4
THROUGHPUT_WORKERS = 2
ANSWER_DEADLINE_S = 300.0   # no compile on these machines takes this long
CLIENTS = 3                 # closed loops while waiting for every worker's compiled answer


def build_archives(workdir: Path, archiver: Path) -> dict[str, Path]:
    """compiled.mar, eager.mar and preload.mar, with weights generated now."""
    weights = workdir / "weights"
    weights.mkdir()
    made = subprocess.run([sys.executable, str(MODELS_DIR / "make_weights.py"), str(weights)],
                          check=False, capture_output=True, text=True, timeout=300)
    if made.returncode != 0:
        raise BenchError(f"building the compiled round's weights failed:\n{made.stderr[-2000:]}")
    handler = ["--handler", str(MODELS_DIR / "compiled_handler.py")]
    mlp = ["--model-file", str(MODELS_DIR / "compiled_model.py"),
           "--serialized-file", str(weights / "compiled_mlp.pt"), *handler]
    specs = {"compiled": [*mlp, "--config-file", str(MODELS_DIR / "compiled.yaml")],
             "eager": [*mlp, "--config-file", str(MODELS_DIR / "eager.yaml")],
             "preload": ["--model-file", str(MODELS_DIR / "big_model.py"),
                         "--serialized-file", str(weights / "big_linear.pt"), *handler,
                         "--config-file", str(MODELS_DIR / "preload.yaml")]}
    out = workdir / "archives"
    out.mkdir(exist_ok=True)
    for name, spec in specs.items():
        run_archiver(archiver, ["--model-name", name, "--version", "1.0",
                                "--export-path", str(out), "--force", *spec], 600)
    return {name: out / f"{name}.mar" for name in ARCHIVES}


def wrk_scripts(workdir: Path) -> dict[str, Path]:
    body = json.dumps(sample_row(64))
    scripts = {}
    for model in ("compiled", "eager"):
        scripts[model] = workdir / f"wrk-{model}.lua"
        scripts[model].write_text(WRK_LUA % body)
    return scripts


def predict(server: Server, model: str, width: int) -> dict[str, Any]:
    status, text, _ = http("POST", f"{server.inference}/predictions/{model}",
                           json.dumps(sample_row(width)).encode(), timeout=ANSWER_DEADLINE_S)
    if status != 200:
        raise BenchError(f"{server.label}: {model} answered {status} {text[:300]}")
    answer = json.loads(text)
    if not isinstance(answer, dict) or not {"y", "pid", "compiled"} <= answer.keys():
        raise BenchError(f"{server.label}: unexpected answer from {model}: {text[:300]}")
    return answer


def until_compiled_answers(server: Server, workers: int) -> dict[str, Any]:
    """Closed-loop clients ask the compiled model until ``workers`` distinct pids have answered
    compiled; the last answer seen, for the accuracy check."""
    compiled_pids: set[int] = set()
    errors: list[str] = []
    last: dict[str, Any] = {}
    done = threading.Event()
    deadline = time.perf_counter() + ANSWER_DEADLINE_S

    def client() -> None:
        while not done.is_set() and time.perf_counter() < deadline:
            try:
                answer = predict(server, "compiled", 64)
            except (BenchError, OSError) as exc:
                errors.append(str(exc))
                done.set()
                return
            last.update(answer)
            if answer["compiled"]:
                compiled_pids.add(int(answer["pid"]))
            if len(compiled_pids) >= workers:
                done.set()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(ANSWER_DEADLINE_S + 30)
    if errors:
        raise BenchError(errors[0])
    if len(compiled_pids) < workers:
        raise BenchError(f"{server.label}: only {len(compiled_pids)} of {workers} workers "
                         f"answered compiled within {ANSWER_DEADLINE_S:.0f} s")
    return last


def start_and_scale(server: Server) -> dict[str, Any]:
    print(f"{server.label}: compiled MLP, register 1 worker and scale to {SCALED_WORKERS}",
          flush=True)
    started = time.perf_counter()
    server.register("compiled", workers=1)
    registered_s = time.perf_counter() - started
    first = until_compiled_answers(server, 1)
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    server.scale("compiled", SCALED_WORKERS)
    until_compiled_answers(server, SCALED_WORKERS)
    scale_s = time.perf_counter() - started
    return {"compile_register_s": registered_s, "compile_first_answer_s": first_s,
            "compile_scale_s": scale_s, "compile_scale_ratio": scale_s / first_s,
            "compiled_answer": first["y"]}


def throughput(server: Server, load: Load) -> dict[str, Any]:
    """Compiled, then eager: 2 workers each, 16 connections."""
    url = f"{server.inference}/predictions"
    server.scale("compiled", THROUGHPUT_WORKERS)
    compiled = load.measure(f"{url}/compiled", "compiled", 16)
    server.unregister("compiled")
    print(f"{server.label}: eager MLP", flush=True)
    server.register("eager", workers=THROUGHPUT_WORKERS)
    eager_answer = predict(server, "eager", 64)
    eager = load.measure(f"{url}/eager", "eager", 16)
    server.unregister("eager")
    return {"compiled_rps": compiled["rps"], "eager_rps": eager["rps"],
            "compiled_speedup": compiled["rps"] / max(eager["rps"], 1e-9),
            "eager_answer": eager_answer["y"],
            "compiled_wrk": {"compiled": compiled, "eager": eager}}


def preloaded_memory(server: Server) -> dict[str, Any]:
    print(f"{server.label}: preloaded {WEIGHTS_MB:.0f} MiB model, {PRELOAD_WORKERS} workers",
          flush=True)
    server.register("preload", workers=PRELOAD_WORKERS)
    for _ in range(2 * PRELOAD_WORKERS):
        predict(server, "preload", WIDTH)
    workers = server.remember(live_processes(server.worker_pids("preload")))
    templates = server.remember(live_processes(template_pids(server, "preload")))
    if len(workers) != PRELOAD_WORKERS:
        raise BenchError(f"{server.label}: {len(workers)} preload workers found, expected "
                         f"{PRELOAD_WORKERS}")
    uss = [p.memory_full_info().uss / MIB for p in workers]
    pss = sum(p.memory_full_info().pss for p in [*workers, *templates]) / MIB
    server.unregister("preload")
    return {"preload_workers_uss_mb": sum(uss), "preload_worker_uss_mb": statistics.median(uss),
            "preload_pss_mb": pss, "preload_uss_ratio": sum(uss) / WEIGHTS_MB,
            "preload_templates": len(templates)}


def template_pids(server: Server, model: str) -> list[int]:
    """torchd's template process of ``model`` (describe's ``template``); TorchServe has none."""
    status, text, _ = http("GET", f"{server.management}/models/{model}")
    if status != 200:
        raise BenchError(f"{server.label}: describe {model} -> {status}")
    template = json.loads(text)[0].get("template") or {}
    return [int(template["pid"])] if template.get("pid") else []


def compiled_round(server: Server, load: Load) -> dict[str, Any]:
    # TorchServe's workers keep inductor's cache in one directory for the server's life: empty
    # it, so that this round compiles cold as torchd's does (a new version, a new cache)
    cache = getattr(server, "inductor_cache", None)
    if cache is not None:
        shutil.rmtree(cache, ignore_errors=True)
    result = start_and_scale(server)
    result.update(throughput(server, load))
    compiled, eager = result.pop("compiled_answer"), result.pop("eager_answer")
    result["compiled_max_abs_diff"] = max(abs(a - b) for a, b in zip(compiled, eager))
    result.update(preloaded_memory(server))
    return result


def summary(result: dict[str, Any]) -> str:
    return (f"compiled: first answer {result['compile_first_answer_s']:.1f} s, scale 1 -> "
            f"{SCALED_WORKERS} {result['compile_scale_s']:.1f} s "
            f"(x{result['compile_scale_ratio']:.2f}), {result['compiled_rps']:.0f} vs eager "
            f"{result['eager_rps']:.0f} req/s, |compiled - eager| "
            f"{result['compiled_max_abs_diff']:.1e}; preload {PRELOAD_WORKERS} workers USS "
            f"{result['preload_workers_uss_mb']:.0f} MiB (x{result['preload_uss_ratio']:.2f} "
            f"the weights), PSS {result['preload_pss_mb']:.0f} MiB")


def describe() -> dict[str, Any]:
    return {"weights_mb": WEIGHTS_MB, "scaled_workers": SCALED_WORKERS,
            "preload_workers": PRELOAD_WORKERS, "throughput_workers": THROUGHPUT_WORKERS}
