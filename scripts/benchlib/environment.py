"""What the bench needs before it starts: TorchServe's venv, wrk, Java, torchd, the archives."""
from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import REPO, REPO_VENV, BenchError, tail
from .ts_llm_handler import torchserve_handler

MODELS_DIR = REPO / "scripts" / "bench_models"
TS_PACKAGES = ["torchserve==0.12.0", "torch-model-archiver==0.12.0", "torch==2.13.0",
               # TorchServe's worker imports yaml, but its wheel does not declare the dependency.
               "pyyaml", "pillow"]
DEFAULT_TS_VENV = Path.home() / ".cache" / "torchd-bench" / "ts-venv"
# a TorchServe 0.12.0 source tree, for the LLM round's TorchServe handler (ts_llm_handler.py):
# git clone --branch v0.12.0 https://github.com/pytorch/serve ~/.cache/torchd-bench/serve-v0.12.0
DEFAULT_TS_SOURCE = Path.home() / ".cache" / "torchd-bench" / "serve-v0.12.0"


def llm_packages() -> list[str]:
    """What TorchServe's side of the LLM round needs besides TS_PACKAGES: transformers and
    tokenizers at the versions of the driver's venv (the repo's `llm` extra), so both servers
    run the same model code."""
    try:
        return [f"{name}=={importlib.metadata.version(name)}"
                for name in ("transformers", "tokenizers")]
    except importlib.metadata.PackageNotFoundError as exc:
        raise BenchError(f"{exc.name} is not installed in {REPO_VENV}: the LLM round needs the "
                         "llm extra (pip install -e '.[llm]', which make test does)") from exc


def ensure_ts_venv(venv: Path, extra: list[str] | None = None) -> Path:
    """Create the TorchServe venv and install the pinned packages (and ``extra``) unless
    already done."""
    stamp = venv / ".torchd-bench-installed"
    packages = [*TS_PACKAGES, *(extra or [])]
    wanted = "\n".join(packages)
    if stamp.exists() and stamp.read_text() == wanted and (venv / "bin" / "torchserve").exists():
        return venv
    print(f"installing TorchServe into {venv} (once; a few minutes)...", flush=True)
    if not (venv / "bin" / "python").exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    log = venv / "pip-install.log"
    with log.open("w") as out:
        done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", *packages],
                              check=False, stdout=out, stderr=subprocess.STDOUT, timeout=1800)
    if done.returncode != 0:
        raise BenchError(f"pip install into {venv} failed; see {log}:\n{tail(log)}")
    stamp.write_text(wanted)
    return venv


def require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BenchError(f"{name} not found: {hint}")
    return path


def java_version() -> str:
    require_tool("java", "TorchServe needs Java 17: apt-get install -y openjdk-17-jre-headless")
    out = subprocess.run(["java", "-version"], check=False, capture_output=True, text=True,
                         timeout=30)
    return (out.stderr or out.stdout).splitlines()[0]


def check_torchd(torchd: Path) -> None:
    """Fail early, with the reason, when `torchd serve` cannot run."""
    try:
        done = subprocess.run([str(torchd), "serve", "--help"], check=False,
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"cannot run {torchd} serve --help: {exc}") from exc
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise BenchError(f"`{torchd} serve --help` failed (exit {done.returncode}): "
                         + " | ".join(last) + "\n(use --only torchserve to bench TorchServe alone)")


# ---------------------------------------------------------------- archives

STANDARD_ARCHIVES = ("noop", "mlp", "image")
# the continuous round's: one handler, two model-config.yaml files (continuous, static batching)
CONTINUOUS_ARCHIVES = ("steps_cb", "steps")


def build_archives(workdir: Path, archiver: Path,
                   names: tuple[str, ...] = STANDARD_ARCHIVES) -> dict[str, Path]:
    """Build the named archives: noop.mar, mlp.mar (TorchScript generated now,
    deterministically), image.mar; steps_cb.mar and steps.mar."""
    out = workdir / "archives"
    out.mkdir()
    specs = {"noop": ["--handler", str(MODELS_DIR / "noop_handler.py")],
             "image": ["--handler", str(MODELS_DIR / "image_handler.py")],
             "steps_cb": ["--handler", str(MODELS_DIR / "steps_handler.py"),
                          "--config-file", str(MODELS_DIR / "steps_continuous.yaml")],
             "steps": ["--handler", str(MODELS_DIR / "steps_handler.py"),
                       "--config-file", str(MODELS_DIR / "steps_static.yaml")]}
    if "mlp" in names:
        mlp_pt = workdir / "mlp.pt"
        made = subprocess.run([sys.executable, str(MODELS_DIR / "make_mlp.py"), str(mlp_pt)],
                              check=False, capture_output=True, text=True, timeout=300)
        if made.returncode != 0:
            raise BenchError(f"building the MLP failed:\n{made.stderr[-2000:]}")
        specs["mlp"] = ["--handler", str(MODELS_DIR / "mlp_handler.py"),
                        "--serialized-file", str(mlp_pt)]
    for name in names:
        run_archiver(archiver, ["--model-name", name, "--version", "1.0",
                                "--export-path", str(out), "--force", *specs[name]], 300)
    return {name: out / f"{name}.mar" for name in names}


def run_archiver(archiver: Path, args: list[str], timeout: float) -> None:
    """torch-model-archiver with a temporary directory of its own: it stages an archive in
    ``$TMPDIR/<name>``, deleting whatever is there first."""
    with tempfile.TemporaryDirectory(prefix="archiver-") as staging:
        subprocess.run([str(archiver), *args], check=True, capture_output=True,
                       timeout=timeout, env={**os.environ, "TMPDIR": staging})


def find_archiver(ts_venv: Path) -> Path:
    for candidate in (REPO_VENV / "bin" / "torch-model-archiver",
                      ts_venv / "bin" / "torch-model-archiver"):
        if candidate.exists():
            return candidate
    raise BenchError("torch-model-archiver not found: pip install torch-model-archiver==0.12.0")


# ---------------------------------------------------------------- the LLM round's archives

# torchd: the built-in text_generation handler with and without continuous batching;
# TorchServe: its own continuous-batching streaming handler (benchlib/ts_llm_handler.py)
LLM_ARCHIVES = ("llm_cb", "llm", "ts_llm_cb")
# LLM archives that could not be built, and why (TorchServe's, without its source tree)
LLM_NOT_BUILT: dict[str, str] = {}
LLM_CONFIGS = {
    "llm_cb": {"continuousBatching": "true", "batchSize": 32},
    "llm": {"continuousBatching": "false", "batchSize": 1},
    "ts_llm_cb": {"continuousBatching": "true", "batchSize": 32},
}
LLM_MAX_BATCH_DELAY_MS = 5


def build_tiny_llm(workdir: Path) -> Path:
    """The tiny model (examples/tiny_llm.py: a 2-layer Llama, random weights), built once."""
    model_dir = workdir / "tiny-llm"
    made = subprocess.run([sys.executable, str(REPO / "examples" / "tiny_llm.py"), str(model_dir)],
                          check=False, capture_output=True, text=True, timeout=300)
    if made.returncode != 0:
        raise BenchError(f"building the tiny LLM failed (the llm extra installed?):\n"
                         f"{made.stderr[-2000:]}")
    return model_dir


def llm_config(name: str, model_dir: Path, threads: int | None = None) -> str:
    """model-config.yaml of an LLM archive: the model directory, absolute, under the key each
    handler reads (torchd's text_generation: model_path; TorchServe's: modelId); ``threads``:
    torchd's workerThreads (TorchServe has no such key)."""
    settings = LLM_CONFIGS[name]
    torchserve = name.startswith("ts_")
    key = "modelId" if torchserve else "model_path"
    pinned = [f"workerThreads: {threads}"] if threads and not torchserve else []
    return "\n".join([
        f"# scripts/bench's LLM round: {name}",
        "minWorkers: 1", "maxWorkers: 1", *pinned,
        f"batchSize: {settings['batchSize']}",
        f"maxBatchDelay: {LLM_MAX_BATCH_DELAY_MS}",
        f"continuousBatching: {settings['continuousBatching']}",
        "handler:", f"  {key}: {model_dir}", ""])


def build_llm_archives(workdir: Path, archiver: Path, threads: int | None = None,
                       ts_source: Path | None = None) -> dict[str, Path]:
    """The tiny model and the three LLM archives (.mar; the weights stay in the model dir);
    ``threads``: see llm_config; ``ts_source``: TorchServe's source tree, for its handler
    (without it, its archive is not built: LLM_NOT_BUILT says why)."""
    model_dir = build_tiny_llm(workdir)
    out = workdir / "archives"
    out.mkdir(exist_ok=True)
    archives = {}
    for name in LLM_ARCHIVES:
        config = workdir / f"{name}.yaml"
        config.write_text(llm_config(name, model_dir, threads))
        if name.startswith("ts_"):
            try:
                ts_handler, ts_model = torchserve_handler(ts_source, workdir / "ts-handler")
            except BenchError as exc:
                LLM_NOT_BUILT[name] = str(exc)
                print(f"TorchServe's LLM handler is left out: {exc}", flush=True)
                continue
            handler = ["--handler", str(ts_handler), "--model-file", str(ts_model)]
        else:
            handler = ["--handler", str(MODELS_DIR / "llm_handler.py")]
        run_archiver(archiver, ["--model-name", name, "--version", "1.0",
                                "--export-path", str(out), "--force", "--config-file",
                                str(config), *handler], 300)
        archives[name] = out / f"{name}.mar"
    return archives
