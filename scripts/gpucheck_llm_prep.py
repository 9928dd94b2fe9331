"""gpu-check --llm's preparation (here, with network) and its model store (there).

``prepare()`` fills ``.gpu/`` (ignored by git; the device tool carries it): ``.gpu/whl`` holds
the CPython 3.12 manylinux wheels the GPU machine's python lacks or may hold at other versions
(torchd's server packages, grpcio and protobuf at the versions of the generated gRPC code, and
the ``llm`` extra: transformers, tokenizers, safetensors, huggingface_hub with what they need),
at the versions of this venv; ``.gpu/llm/tiny-llm`` is examples/tiny_llm.py's model, 4 layers of
256. ``make_store()`` writes the no-archive model directories gpu-check registers.
"""
from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
GPU_DIR = ROOT / ".gpu"
WHEELS = GPU_DIR / "whl"
MODEL = GPU_DIR / "llm" / "tiny-llm"
MODEL_SHAPE = {"layers": 4, "hidden": 256}
# Asked for by name, at this venv's versions; pip adds what they need.
PACKAGES = ["starlette", "hypercorn", "h2", "hpack", "hyperframe", "priority", "wsproto",
            "setproctitle", "python-multipart", "uvicorn", "httptools", "nvidia-ml-py",
            "grpcio", "protobuf", "transformers", "tokenizers", "safetensors",
            "huggingface_hub"]
# In the GPU image at versions every wheel above accepts (numpy>=1.17, pyyaml>=5.1): not carried.
DEVICE_HAS = {"numpy", "pyyaml", "torch"}
PLATFORM = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
            *[arg for tag in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
                              "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                              "manylinux_2_5_x86_64", "manylinux1_x86_64")
              for arg in ("--platform", tag)]]


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name(path: Path) -> str:
    return normalized(path.name.split("-", 1)[0])


def _constraints() -> Path:
    """This venv's versions of everything (local builds such as torch's ``+cpu`` left out), so
    what pip adds is what the tests here ran with."""
    pins = sorted({f"{dist.metadata['Name']}=={dist.version}"
                   for dist in importlib.metadata.distributions()
                   if dist.metadata["Name"] and "+" not in dist.version
                   and normalized(dist.metadata["Name"]) not in DEVICE_HAS})
    handle = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
    handle.write("\n".join(pins) + "\n")
    handle.close()
    return Path(handle.name)


def download_wheels() -> list[Path]:
    shutil.rmtree(WHEELS, ignore_errors=True)   # one version of each, or pip install stops
    WHEELS.mkdir(parents=True)
    wanted = [f"{name}=={importlib.metadata.version(name)}" for name in PACKAGES]
    constraints = _constraints()
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", *PLATFORM,
                        "-c", str(constraints), "-d", str(WHEELS), *wanted], check=True)
    finally:
        constraints.unlink()
    for wheel in WHEELS.glob("*.whl"):
        if wheel_name(wheel) in DEVICE_HAS:
            wheel.unlink()
    return sorted(WHEELS.glob("*.whl"))


def build_model(directory: Path) -> Path:
    """examples/tiny_llm.py's model with its weights stored in float16 (half the bytes to
    carry; the handler casts them to its ``dtype``)."""
    sys.path.insert(0, str(ROOT))
    from examples.tiny_llm import build
    from safetensors.torch import load_file, save_file
    shutil.rmtree(directory, ignore_errors=True)
    build(directory, **MODEL_SHAPE)
    for weights in directory.glob("*.safetensors"):
        tensors = {name: t.half() for name, t in load_file(weights).items()}
        save_file(tensors, weights, metadata={"format": "pt"})
    return directory


def prepare() -> int:
    """``.gpu/whl`` and ``.gpu/llm/tiny-llm``, listed with their sizes."""
    wheels = download_wheels()
    build_model(MODEL)
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 2**20:7.2f} MiB  {wheel.name}")
    total = sum(w.stat().st_size for w in wheels)
    model = sum(f.stat().st_size for f in MODEL.rglob("*") if f.is_file())
    print(f"{len(wheels)} wheels, {total / 2**20:.1f} MiB; model {model / 2**20:.1f} MiB "
          f"in {MODEL.relative_to(ROOT)}; carry .gpu ({(total + model) / 2**20:.1f} MiB)")
    return 0


# ---------------------------------------------------------------- the model store (there)

def model_configs(cpu: bool) -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (handler, model-config.yaml): continuous batching, one request at a time, and
    vllm_handler (TorchServe 0.12's keys) on the same model."""
    common = {"minWorkers": 1, "maxWorkers": 1, "maxBatchDelay": 5, "responseTimeout": 120,
              "handler": {"model_path": "model", "dtype": "float32" if cpu else "float16"}}
    vllm = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 1, "maxBatchDelay": 5,
            "responseTimeout": 120, "startupTimeout": 300, "asyncCommunication": True,
            "handler": {"model_path": "model", "vllm_engine_config": {
                "max_num_seqs": 32, "max_model_len": 512, "gpu_memory_utilization": 0.3,
                "enforce_eager": True, "dtype": "float32" if cpu else "float16"}}}
    return {"llm": ("text_generation", {**common, "continuousBatching": True, "batchSize": 32}),
            "llm1": ("text_generation", {**common, "continuousBatching": False,
                                         "batchSize": 1}),
            "vllm": ("vllm_handler", vllm)}


def make_store(store: Path, model: Path, cpu: bool) -> None:
    """Directory archives (torch-model-archiver --archive-format no-archive's layout), each
    with its own copy of the model under ``model/``."""
    for name, (handler, config) in model_configs(cpu).items():
        target = store / name
        (target / "MAR-INF").mkdir(parents=True)
        shutil.copytree(model, target / "model")
        (target / "model-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        manifest = {"runtime": "python", "archiverVersion": "gpu-check",
                    "model": {"modelName": name, "modelVersion": "1.0", "handler": handler,
                              "configFile": "model-config.yaml"}}
        (target / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))


def model_source(work: Path) -> Path:
    """The prepared model, else one built now (needs transformers in this python)."""
    if (MODEL / "config.json").is_file():
        return MODEL
    print(f"no {MODEL.relative_to(ROOT)} (run gpu-check --prepare): building the model now",
          flush=True)
    return build_model(work / "tiny-llm")
