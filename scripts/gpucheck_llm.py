"""gpu-check --llm: language models on the GPU machine, end to end.

Starts torchd on loopback with examples/tiny_llm.py's model (a 4-layer, 256-wide Llama with
random weights and its own tokenizer) in three no-archive model directories: ``llm``
(``text_generation``, fp16, ``continuousBatching: true``, ``batchSize: 32``), ``llm1`` (the same
handler one request at a time: ``batchSize: 1``) and ``vllm`` (``vllm_handler``,
``asyncCommunication: true``), and checks: the worker is on the GPU (describe's ``gpu``, the
handler's ``on cuda:0`` log line, its GPU memory in NVML); greedy completions (temperature 0,
``ignore_eos``) are the same streamed and whole, and without continuous batching; 32 closed-loop
streaming clients asking 64 tokens each: output tokens/s (the handler's
``llm_generation_tokens_total``), time to first token p50/p99 and the daemon's CPU per token,
with continuous batching against one request at a time (issue 25's goals: at least 4x the
tokens/s, TTFT p99 under 0.25x), and a completion within 5 s each time the clients hang up;
and vllm_handler: one completion where ``import vllm`` works, else a load error that names
vLLM. One table, JSON in --out (the daemon's log beside it), exit 1 if a check fails; about
1-2 minutes.

1. Here (network; the venv with the llm extra), once per checkout: ::

       .venv/bin/python scripts/gpu-check --prepare

   puts ``.gpu/whl`` (45 CPython 3.12 wheels, 39 MiB: torchd's server packages, grpcio and
   protobuf, transformers, tokenizers, safetensors, huggingface_hub and what they need) and
   ``.gpu/llm/tiny-llm`` (5 MiB) in place. ``.gpu/`` is ignored by git; the device tool
   carries it (64 MiB with the working tree).

2. Dry run here, on the CPU in float32 (only the GPU check may fail): ::

       PYTHONPATH=$PWD .venv/bin/python scripts/gpu-check --llm --cpu --out /tmp/llm.json

3. On the GPU machine: the device tool's ``run`` with ``carry: [".gpu"]``, ``timeout_s: 420``
   and the command ::

       python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
         --target /tmp/site .gpu/whl/*.whl && export PYTHONPATH=$PWD:/tmp/site \
         PYTHONUNBUFFERED=1 && timeout 400 python3 scripts/gpu-check --llm \
         --out $OUT/gpu-check-llm.json

   Expected: every line ``ok`` (``FAIL`` marks a broken check; ``-`` lines are figures): the
   worker on cuda:0 with GPU memory in use, streamed == whole, llm1 the same tokens, tokens/s
   and TTFT for both models with the ratios, and the vLLM line. $OUT brings back
   gpu-check-llm.json and gpu-check-llm.torchd.log.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib.streams import percentile
from gpucheck_llm_prep import make_store, model_source, prepare
from gpucheck_sse import PROMPTS, Completion, as_json, call, complete, stream_window
from gpucheck_tools import GpuBusy, Report, Torchd, run_steps

CLIENTS, TOKENS, WARM_S = 32, 64, 3.0
# Workers read the model from the store: no hub, no network.
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
LOADED = r"\[worker {}\] .*text_generation: (\S+) \((\S+), (\w+)\) on (\S+),"


def manage(d: Torchd, method: str, path: str) -> tuple[int, Any]:
    status, raw = call(d.url(d.ports[1], path), method, timeout=600)
    return status, as_json(raw)


def register(d: Torchd, report: Report, name: str) -> tuple[int, Any]:
    started = time.monotonic()
    status, answer = manage(d, "POST", f"/models?url={name}&initial_workers=1"
                                       "&synchronous=true&startup_timeout=300")
    report.info(f"register {name}", f"{status} in {time.monotonic() - started:.1f} s: "
                                    f"{str(answer)[:300]}")
    return status, answer


def generated_tokens(d: Torchd, model: str) -> float:
    """The handler's llm_generation_tokens_total for ``model``, from /metrics."""
    total = 0.0
    for line in d.metrics().splitlines():
        if line.startswith("llm_generation_tokens_total") and f'ModelName="{model}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def settle(d: Torchd, model: str) -> float:
    """Seconds a 4-token completion takes right after streaming clients hung up: the worker
    must be free again (a stream it goes on generating for nobody must not hold it)."""
    started = time.monotonic()
    try:
        ok = complete(d.ports[0], model, "hello", stream=False, max_tokens=4,
                      timeout=150).status == 200
    except OSError:   # timed out
        ok = False
    elapsed = time.monotonic() - started
    return elapsed if ok else max(elapsed, 999.0)


def nvml_memory() -> dict[int, int]:
    """GPU memory (bytes) of each process NVML lists; {} where it shows none."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:   # no NVML (the CPU dry run): nothing to show
        return {}
    try:
        used: dict[int, int] = {}
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                used[process.pid] = used.get(process.pid, 0) + (process.usedGpuMemory or 0)
        return used
    finally:
        pynvml.nvmlShutdown()


# ---------------------------------------------------------------- checks

def check_device(d: Torchd, report: Report, cpu: bool) -> None:
    worker = d.workers("llm")[0]
    loaded = re.findall(LOADED.format(worker["id"]), d.log.read_text(errors="replace"))
    memory = worker.get("gpuMemoryUsage") or nvml_memory().get(worker["pid"])
    on_cuda = any(device.startswith("cuda") for *_, device in loaded)
    detail = (f"describe gpu={worker['gpu']} gpuUsage={worker['gpuUsage']!r}, worker GPU "
              f"memory {memory and f'{memory / 2**20:.0f} MiB'}; handler: "
              f"{', '.join(f'{dtype} on {device}' for *_, dtype, device in loaded) or '?'}")
    report.check("text_generation worker on the GPU (describe gpu, cuda device)",
                 worker["gpu"] is True and on_cuda,
                 detail + (" (--cpu: no CUDA, expected to fail)" if cpu else ""))
    if not cpu:
        report.check("the worker holds GPU memory (describe or NVML)", bool(memory),
                     f"{memory} bytes" if memory else "none reported: " + str(nvml_memory()))


def check_greedy(d: Torchd, report: Report) -> None:
    port, rows, same = d.ports[0], [], []
    for prompt in PROMPTS[:3]:
        whole = complete(port, "llm", prompt, stream=False)
        streamed = complete(port, "llm", prompt, stream=True)
        alone = complete(port, "llm1", prompt, stream=True)
        rows.append((whole, streamed))
        same.append(alone.status == 200 and alone.text == whole.text)
    good = all(w.status == s.status == 200 and w.text and w.text == s.text
               and w.tokens == s.tokens == 32 and w.finish == s.finish == "length"
               for w, s in rows)
    report.check("greedy completion: streamed == whole (32 tokens, 3 prompts)", good,
                 "; ".join(_brief(w, s) for w, s in rows))
    report.check("the same tokens without continuous batching (llm1, streamed)", all(same),
                 f"{same}")


def _brief(whole: Completion, streamed: Completion) -> str:
    if whole.error or streamed.error:
        return f"{whole.status}/{streamed.status} {whole.error or streamed.error}"
    return f"{whole.text[:24]!r}... {whole.tokens}/{streamed.tokens} tokens"


def measure(d: Torchd, report: Report, model: str, label: str, seconds: float,
            cpu: bool) -> dict[str, Any]:
    """32 streaming clients for ``seconds`` after a warm-up: tokens/s, TTFT, daemon CPU."""
    port = d.ports[0]
    stream_window(port, model, CLIENTS, WARM_S, TOKENS)     # warm-up (kernels, batch shapes)
    settled = [settle(d, model)]
    tokens, cpu_s = generated_tokens(d, model), d.cpu_seconds()
    busy = None if cpu else GpuBusy().start()
    streams, (tokens_end, cpu_end), end = stream_window(
        port, model, CLIENTS, seconds, TOKENS,
        lambda: (generated_tokens(d, model), d.cpu_seconds()))
    gpu_busy = busy.stop() if busy else None
    settled.append(settle(d, model))
    # a request with no first token by the window's end counts the time it waited (a bound)
    ttft = [((s.first or end) - s.started) * 1e3 for s in streams if not s.error]
    generated = tokens_end - tokens
    result = {"tokens_per_s": generated / seconds, "ttft_p50_ms": percentile(ttft, 50),
              "ttft_p99_ms": percentile(ttft, 99), "requests": len(streams),
              "answered": sum(1 for s in streams if s.done), "errors": sorted(
                  {s.error for s in streams if s.error})[:3],
              "daemon_us_per_token": (cpu_end - cpu_s) / max(generated, 1) * 1e6,
              "gpu_busy_percent": gpu_busy, "settle_s": settled}
    report.data[f"streams_{model}"] = result
    report.info(f"{model}, {label}: {CLIENTS} streams x {TOKENS} tokens, {seconds:.0f} s",
                f"{result['tokens_per_s']:.0f} tokens/s, TTFT p50 {result['ttft_p50_ms']:.0f} "
                f"ms p99 {result['ttft_p99_ms']:.0f} ms, {result['answered']} answers, daemon "
                f"{result['daemon_us_per_token']:.1f} us/token"
                + (f", GPU {gpu_busy:.0f}% busy" if gpu_busy is not None else "")
                + (f", errors {result['errors']}" if result["errors"] else ""))
    return result


def compare_batching(d: Torchd, report: Report, seconds: float, cpu: bool) -> None:
    cb = measure(d, report, "llm", "continuous batching", seconds, cpu)
    one = measure(d, report, "llm1", "one request at a time", seconds, cpu)
    speedup = cb["tokens_per_s"] / max(one["tokens_per_s"], 1e-9)
    report.check("continuous batching: >= 4x the tokens/s of one at a time", speedup >= 4,
                 f"{cb['tokens_per_s']:.0f} / {one['tokens_per_s']:.0f} = {speedup:.1f}x")
    ttft = cb["ttft_p99_ms"] / max(one["ttft_p99_ms"], 1e-9)
    report.check("continuous batching: TTFT p99 < 0.25x of one at a time", ttft < 0.25,
                 f"{cb['ttft_p99_ms']:.0f} / {one['ttft_p99_ms']:.0f} ms = {ttft:.3f}x")
    report.check("no failed streams", not cb["errors"] and not one["errors"],
                 f"{cb['errors'] + one['errors']}")
    settled = cb["settle_s"] + one["settle_s"]
    report.check("a completion within 5 s of 32 streaming clients hanging up",
                 max(settled) < 5, "seconds: " + ", ".join(f"{s:.1f}" for s in settled))


def vllm_version() -> str | None:
    probe = subprocess.run([sys.executable, "-c", "import vllm; print(vllm.__version__)"],
                           capture_output=True, text=True, timeout=240)
    return probe.stdout.strip() if probe.returncode == 0 else None


def check_vllm(d: Torchd, report: Report) -> None:
    version = vllm_version()
    report.info("import vllm", version or "fails")
    status, answer = register(d, report, "vllm")
    message = answer.get("message", "") if isinstance(answer, dict) else str(answer)
    if version is None:
        report.check("vllm_handler without vLLM: registering fails naming vLLM",
                     status >= 400 and "vLLM" in message, f"{status}: {message[:300]}")
        return
    whole = complete(d.ports[0], "vllm", PROMPTS[0], stream=False, max_tokens=16)
    streamed = complete(d.ports[0], "vllm", PROMPTS[0], stream=True, max_tokens=16)
    report.check("vllm_handler on vLLM: a completion, streamed == whole",
                 status == 200 and whole.status == 200 and whole.tokens == 16
                 and streamed.text == whole.text,
                 f"register {status}; {_brief(whole, streamed)}")


# ---------------------------------------------------------------- main

def main(args: argparse.Namespace) -> int:
    if args.prepare:
        return prepare()
    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="gpu-check-llm-"))
    store = work / "store"
    make_store(store, model_source(work), args.cpu)
    report = Report()
    settings = {"number_of_gpu": 0} if args.cpu else {}
    d = Torchd(work, store, settings, OFFLINE)

    def steps() -> None:
        for name in ("llm", "llm1"):
            status, answer = register(d, report, name)
            if status != 200:
                raise RuntimeError(f"{name} did not register: {status} {answer}")
        check_device(d, report, args.cpu)
        check_greedy(d, report)
        compare_batching(d, report, args.seconds, args.cpu)
        for name in ("llm", "llm1"):   # their GPU memory back before vLLM takes its share
            manage(d, "DELETE", f"/models/{name}")
        check_vllm(d, report)

    run_steps("gpu-check --llm", d, report, args.out, steps, work)
    report.info("duration", f"{time.monotonic() - began:.0f} s")
    return report.finish(args.out)
