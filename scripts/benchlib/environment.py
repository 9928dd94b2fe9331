"""What the bench needs before it starts: TorchServe's venv, wrk, Java, torchd, the archives."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from . import REPO, REPO_VENV, BenchError, tail

MODELS_DIR = REPO / "scripts" / "bench_models"
TS_PACKAGES = ["torchserve==0.12.0", "torch-model-archiver==0.12.0", "torch==2.13.0",
               # TorchServe's worker imports yaml, but its wheel does not declare the dependency.
               "pyyaml", "pillow"]
DEFAULT_TS_VENV = Path.home() / ".cache" / "torchd-bench" / "ts-venv"


def ensure_ts_venv(venv: Path) -> Path:
    """Create the TorchServe venv and install the pinned packages unless already done."""
    stamp = venv / ".torchd-bench-installed"
    wanted = "\n".join(TS_PACKAGES)
    if stamp.exists() and stamp.read_text() == wanted and (venv / "bin" / "torchserve").exists():
        return venv
    print(f"installing TorchServe into {venv} (once; a few minutes)...", flush=True)
    if not (venv / "bin" / "python").exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    log = venv / "pip-install.log"
    with log.open("w") as out:
        done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", *TS_PACKAGES],
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
        subprocess.run([str(archiver), "--model-name", name, "--version", "1.0",
                        "--export-path", str(out), "--force", *specs[name]],
                       check=True, capture_output=True, timeout=300)
    return {name: out / f"{name}.mar" for name in names}


def find_archiver(ts_venv: Path) -> Path:
    for candidate in (REPO_VENV / "bin" / "torch-model-archiver",
                      ts_venv / "bin" / "torch-model-archiver"):
        if candidate.exists():
            return candidate
    raise BenchError("torch-model-archiver not found: pip install torch-model-archiver==0.12.0")
