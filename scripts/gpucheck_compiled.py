"""gpu-check --compiled: compiled and exported models on the GPU machine (issue 26).

Builds, there and then (its torch is not this machine's, so nothing compiled here would load
there), a 64-512-512-10 MLP (scripts/bench_models/compiled_model.py) as no-archive model
directories served by scripts/bench_models/compiled_handler.py: ``compiled`` (modelFile +
state_dict, ``pt2: {compile: {enable: true, backend: inductor}}`` with a warm-up request),
``aoti`` (an AOTInductor ``.pt2`` package compiled for the GPU) and ``preload`` (the eager MLP
with ``preloadModel: true``, which a GPU worker must ignore); then checks that each worker runs
its model on cuda:0 and answers within 1e-3 of the eager model on the CPU, that ``compiled``
is compiled before its first request and a second worker loads the version's compile cache,
that ``preload`` logs that preloadModel does not apply on a GPU, and that NVML shows no
process but the workers using the GPU (the daemon and the zygote hold no CUDA context). One
table, JSON in --out, exit 1 if a check fails; about 1-2 minutes.

1. Here, the wheels gpu-check --prepare puts in ``.gpu/whl`` (torchd's server packages).
2. Dry run here, on the CPU (only the GPU checks may fail)::

       PYTHONPATH=$PWD .venv/bin/python scripts/gpu-check --compiled --cpu --out /tmp/c.json

3. On the GPU machine: the device tool's ``run`` with ``carry: [".gpu"]``, ``timeout_s: 420``::

       python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
         --target /tmp/site .gpu/whl/*.whl && export PYTHONPATH=$PWD:/tmp/site \
         PYTHONUNBUFFERED=1 && timeout 400 python3 scripts/gpu-check --compiled \
         --out $OUT/gpu-check-compiled.json
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_models.make_weights import sample_row
from gpucheck_tools import Report, Torchd, nvml_pids, run_steps

HERE = Path(__file__).resolve().parent
MODELS = HERE / "bench_models"
TOLERANCE = 1e-3
WARMUP = {"warmup": [sample_row(64)]}
CONFIGS = {"compiled": {"pt2": {"compile": {"enable": True, "backend": "inductor"}},
                        "handler": WARMUP},
           "aoti": {}, "preload": {"preloadModel": True}}


def make_store(store: Path, device: str) -> list[float]:
    """The three model directories; the eager model's answer to sample_row(64), on the CPU."""
    import torch
    sys.path.insert(0, str(MODELS))
    from compiled_model import CompiledMLP
    torch.manual_seed(0)
    model = CompiledMLP().eval()
    row = torch.tensor([sample_row(64)])
    with torch.inference_mode():
        expected = model(row)[0].tolist()
    for name, config in CONFIGS.items():
        target = store / name
        (target / "MAR-INF").mkdir(parents=True)
        shutil.copy2(MODELS / "compiled_handler.py", target / "handler.py")
        entry: dict[str, Any] = {"modelName": name, "modelVersion": "1.0",
                                 "handler": "handler.py", "configFile": "model-config.yaml"}
        if name == "aoti":
            example = (torch.randn(2, 64, device=device),)
            batch = torch.export.Dim("batch", min=1, max=64)
            program = torch.export.export(model.to(device), example,
                                          dynamic_shapes=({0: batch},))
            torch._inductor.aoti_compile_and_package(program,
                                                     package_path=str(target / "mlp.pt2"))
            model.to("cpu")
            entry["serializedFile"] = "mlp.pt2"
        else:
            shutil.copy2(MODELS / "compiled_model.py", target / "compiled_model.py")
            torch.save(model.state_dict(), target / "mlp.pt")
            entry.update(serializedFile="mlp.pt", modelFile="compiled_model.py")
        (target / "model-config.yaml").write_text(json.dumps(config))
        (target / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(
            {"runtime": "python", "model": entry, "archiverVersion": "gpu-check"}))
    return expected


def answer(d: Torchd, name: str) -> dict[str, Any]:
    status, body = d.infer(name, json.dumps(sample_row(64)).encode(), "application/json")
    if status != 200:
        raise RuntimeError(f"{name} answered {status}: {body}")
    return body


def register(d: Torchd, report: Report, name: str) -> None:
    started = time.monotonic()
    d.manage("POST", f"/models?url={name}&initial_workers=1&synchronous=true"
                     "&startup_timeout=300")
    report.info(f"register {name}", f"READY in {time.monotonic() - started:.1f} s")


def check_model(d: Torchd, report: Report, name: str, expected: list[float],
                device: str) -> None:
    body = answer(d, name)
    gap = max(abs(a - b) for a, b in zip(body["y"], expected))
    report.check(f"{name} on {device}, as eager", body["device"].startswith(device)
                 and gap <= TOLERANCE, f"device {body['device']}, |y - eager| {gap:.1e}, "
                                       f"compiled={body['compiled']}")


def check_compiled(d: Torchd, report: Report) -> None:
    first = answer(d, "compiled")
    report.check("compiled before its first request", first["compiled"] is True,
                 f"compiled={first['compiled']}")
    started = time.monotonic()
    d.scale("compiled", 2)
    seconds = time.monotonic() - started
    cache = [line for line in d.log.read_text(errors="replace").splitlines()
             if "fx graph cache hit" in line.lower() or "compiler imported" in line]
    report.info("compiled: scale 1 -> 2", f"{seconds:.1f} s synchronous; "
                                          f"{len(cache)} cache/import log lines")


def check_preload(d: Torchd, report: Report, cpu: bool) -> None:
    log = d.log.read_text(errors="replace")
    ignored = "preloadModel does not apply" in log
    template = d.manage("GET", "/models/preload")[0].get("template")
    report.check("preloadModel ignored for a GPU worker", cpu or (ignored and not template),
                 f"logged={ignored}, template={template}")


def check_no_cuda_in_daemon(d: Torchd, report: Report, cpu: bool) -> None:
    users = set() if cpu else nvml_pids()   # no NVML on a CPU machine
    workers = {w["pid"] for name in CONFIGS for w in d.workers(name)}
    strays = users - workers
    report.check("only workers hold the GPU", cpu or (bool(users) and not strays),
                 f"NVML pids {sorted(users)}, workers {sorted(workers)}, daemon {d.proc.pid}, "
                 f"zygote {d.zygote_pid()}")


def main(args: argparse.Namespace) -> int:
    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="gpu-check-compiled-"))
    store = work / "store"
    device = "cpu" if args.cpu else "cuda"
    report = Report()
    expected = make_store(store, device)
    d = Torchd(work, store, {"number_of_gpu": 0} if args.cpu else {})

    def steps() -> None:
        for name in CONFIGS:
            register(d, report, name)
            check_model(d, report, name, expected, device)
        check_compiled(d, report)
        check_preload(d, report, args.cpu)
        check_no_cuda_in_daemon(d, report, args.cpu)

    run_steps("gpu-check --compiled", d, report, args.out, steps, work)
    report.info("duration", f"{time.monotonic() - began:.0f} s")
    return report.finish(args.out)
