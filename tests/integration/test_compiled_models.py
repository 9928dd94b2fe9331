"""Compiled and exported models through the real daemon (SPEC 6): each format BaseHandler loads
answers as the eager model does; model-config.yaml's ``pt2`` forms compile or leave the model
eager as TorchServe 0.12 does; a compiled model is compiled before it is READY; what cannot load
fails the registration with the cause; MicroBatching and ``handler.profile`` in a worker.

One model, tests/models/mlp_eager's MLP, in every format (tests/models/compiled/generate.py);
its AOTInductor files build in the background while the first tests run."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import torch

from tests.support.archives import MODELS, build_archive
from tests.support.daemon import Daemon, running_daemon
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(180)
EAGER_CLASS = MODELS / "mlp_eager" / "model.py"
HOST = socket.gethostname()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, exported_mlp) -> Daemon:
    exported_mlp.start_aoti()   # C++ compiling, while the first tests run
    empty = tmp_path_factory.mktemp("compiled-archives")
    with running_daemon(empty, tmp_path_factory.mktemp("compiled")) as started:
        yield started


def logged_soon(daemon: Daemon, *texts: str) -> None:
    """The workers' lines reach the daemon's log through a pipe, written in batches (at most
    0.1 s late): wait for them."""
    wait_until(lambda: all(text in daemon.log() for text in texts), 10, 0.05,
               lambda: f"{texts} in the log:\n{daemon.log(3000)}")


def register(daemon: Daemon, name: str, serialized: Path, *, eager_class: bool = False,
             config: dict | None = None, handler: str = "handler.py",
             **params: Any) -> requests.Response:
    """Archive the model as ``name`` (model-config.yaml ``config``) and register it."""
    config_file = None
    if config is not None:
        config_file = daemon.workdir / f"{name}-config.yaml"
        config_file.write_text(json.dumps(config))   # JSON is YAML
    build_archive("compiled", daemon.model_store, name=name, handler=handler,
                  serialized_file=str(serialized),
                  model_file=str(EAGER_CLASS) if eager_class else None,
                  config_file=str(config_file) if config_file else None)
    return daemon.register(f"{name}.mar", initial_workers=1, **params)


def described(daemon: Daemon, name: str) -> dict[str, Any]:
    response = daemon.mgmt("GET", f"/models/{name}", params={"customized": "true"})
    assert response.status_code == 200, response.text
    return json.loads(response.json()[0]["customizedMetadata"])


def predict(daemon: Daemon, name: str, body: Any) -> Any:
    response = daemon.infer("POST", f"/predictions/{name}", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def assert_answers_as_eager(daemon: Daemon, name: str, expected: dict[str, Any]) -> None:
    """One row, then every row in one request: within 1e-4 of the eager model."""
    inputs, outputs = expected["inputs"], expected["outputs"]
    close(predict(daemon, name, inputs[0]), outputs[0])
    close(predict(daemon, name, {"data": inputs}), outputs)


def close(actual: Any, expected: Any) -> None:
    assert torch.allclose(torch.tensor(actual), torch.tensor(expected), atol=1e-4), \
        (actual, expected)


def unregister(daemon: Daemon, name: str) -> None:
    assert daemon.unregister(name).status_code == 200


def test_inductor_compiles_before_ready_and_answers_as_eager(daemon, exported_mlp):
    inputs = exported_mlp.expected()["inputs"]
    config = {"pt2": {"compile": {"enable": True, "backend": "inductor"}},
              "handler": {"warmup": [inputs[0], inputs[1]]}}
    response = register(daemon, "inductor", exported_mlp.folder / "mlp.pt", eager_class=True,
                         config=config)
    assert response.status_code == 200, response.text
    before = described(daemon, "inductor")
    assert before["model_type"] == "OptimizedModule" and before["compiled_backend"] == "inductor"
    assert before["graphs"] == 2   # one request's graph and the batch's, before READY
    assert_answers_as_eager(daemon, "inductor", exported_mlp.expected())
    assert described(daemon, "inductor")["graphs"] == 2   # no client paid for a compile
    logged_soon(daemon, "Compiled model with backend inductor\n",   # TorchServe's line, whole
                "torch.compile(backend=inductor) (from pt2.compile)",
                "warm-up: 2 request(s) alone and as one batch")
    # One compile per model version: the version's own cache, in the daemon's runtime dir...
    cache = Path(before["inductor_cache"])
    assert cache.is_dir() and any(cache.iterdir()) and "torchd-run-" in str(cache)
    assert before["fx_cache"]["miss"] > 0
    # ... which a restarted worker loads instead of compiling again
    [worker] = daemon.workers("inductor")
    os.kill(worker["pid"], signal.SIGKILL)
    wait_until(lambda: [w for w in daemon.workers("inductor")
                        if w["status"] == "READY" and w["pid"] != worker["pid"]], 120, 0.2,
               "the killed worker's replacement READY")
    after = described(daemon, "inductor")
    assert after["inductor_cache"] == str(cache) and after["graphs"] == 2
    assert after["fx_cache"] == {"hit": 2, "miss": 0}, after
    assert_answers_as_eager(daemon, "inductor", exported_mlp.expected())
    unregister(daemon, "inductor")
    assert not cache.exists()   # the version's cache leaves with it


def test_deprecated_string_form_compiles_with_a_warning(daemon, exported_mlp):
    response = register(daemon, "legacy", exported_mlp.folder / "mlp.pt", eager_class=True,
                        config={"pt2": "eager"})
    assert response.status_code == 200, response.text
    metadata = described(daemon, "legacy")
    assert (metadata["model_type"], metadata["compiled_backend"]) == ("OptimizedModule", "eager")
    assert_answers_as_eager(daemon, "legacy", exported_mlp.expected())
    logged_soon(daemon, "pt2: 'eager' in model-config.yaml is a deprecated form",
                "lists no handler.warmup requests: its first requests pay for the compile")
    unregister(daemon, "legacy")


@pytest.mark.parametrize(("name", "pt2", "logged"), [
    ("exportform", {"export": {"aot_compile": True}}, None),
    ("fancy", {"compile": {"enable": True, "backend": "fancy"}},
     "fancy is not a supported pt2 backend"),
])
def test_export_form_and_unknown_backend_stay_eager(daemon, exported_mlp, name, pt2, logged):
    response = register(daemon, name, exported_mlp.folder / "mlp.pt", eager_class=True,
                        config={"pt2": pt2})
    assert response.status_code == 200, response.text
    metadata = described(daemon, name)
    assert (metadata["model_type"], metadata["compiled_backend"]) == ("MLP", None)
    assert_answers_as_eager(daemon, name, exported_mlp.expected())
    if logged:
        logged_soon(daemon, logged)
    unregister(daemon, name)


def test_an_allowed_backend_without_its_package_fails_the_registration(daemon, exported_mlp):
    response = register(daemon, "trt", exported_mlp.folder / "mlp.pt", eager_class=True,
                        config={"pt2": {"compile": {"enable": True, "backend": "tensorrt"}}})
    assert response.status_code == 500, response.text
    message = response.json()["message"]
    assert message.startswith("Failed to start workers for model trt version: 1.0")
    assert "pt2 backend tensorrt needs the package torch_tensorrt" in message
    assert daemon.mgmt("GET", "/models/trt").status_code == 404


def test_onnx_archive_answers_as_eager(daemon, exported_mlp):
    response = register(daemon, "onnx", exported_mlp.folder / "mlp.onnx")
    assert response.status_code == 200, response.text
    metadata = described(daemon, "onnx")
    assert (metadata["model_type"], metadata["format"]) == ("InferenceSession", "onnx")
    assert_answers_as_eager(daemon, "onnx", exported_mlp.expected())
    unregister(daemon, "onnx")


@pytest.mark.parametrize(("name", "file", "cause"), [
    ("junk", "weights.bin", "RuntimeError: No model weights could be loaded: weights.bin is not "
                            "a TorchScript file"),
    ("bareso", "model.so", "RuntimeError: No model weights could be loaded: model.so is a .so, "
                           "which loads only with pt2: {export: {aot_compile: true}}"),
])
def test_a_file_nothing_loads_fails_the_registration(daemon, tmp_path, name, file, cause):
    (tmp_path / file).write_bytes(b"not a model")
    response = register(daemon, name, tmp_path / file)
    assert response.status_code == 500, response.text
    assert cause in response.json()["message"]


def test_the_warm_up_counts_in_the_startup_timeout(daemon, exported_mlp):
    # A model loaded first: the spawn, which the timeout also bounds, is quick once the
    # daemon's zygote has imported torch.
    response = register(daemon, "plain", exported_mlp.folder / "mlp.pt", eager_class=True)
    assert response.status_code == 200, response.text
    unregister(daemon, "plain")
    response = register(daemon, "slowwarm", exported_mlp.folder / "mlp.pt", eager_class=True,
                        handler="slow_warmup.py", startup_timeout=3)
    assert response.status_code == 500, response.text
    assert "worker did not load within 3 s (startup_timeout)" in response.json()["message"]


def test_micro_batching_answers_each_request_of_a_batch(daemon, exported_mlp):
    response = register(daemon, "micro", exported_mlp.folder / "mlp.pt", eager_class=True,
                        handler="micro_handler.py", batch_size=3, max_batch_delay=5000)
    assert response.status_code == 200, response.text
    expected = exported_mlp.expected()
    with ThreadPoolExecutor(3) as pool:   # three requests: one batch of three micro-batches
        answers = list(pool.map(lambda row: predict(daemon, "micro", row), expected["inputs"]))
    for answer, output in zip(answers, expected["outputs"]):
        close(answer, output)
    unregister(daemon, "micro")


def profile_series(daemon: Daemon, model: str) -> list[str]:
    response = requests.get(daemon.url("metrics", "/metrics"), timeout=30)
    assert response.status_code == 200
    return [line for line in response.text.splitlines()
            if line.startswith("ts_handler_") and f'ModelName="{model}"' in line]


def test_handler_profile_times_the_three_steps_of_served_requests(daemon, exported_mlp):
    inputs = exported_mlp.expected()["inputs"]
    config = {"handler": {"profile": True, "warmup": [inputs[0]]}}
    response = register(daemon, "profiled", exported_mlp.folder / "mlp.pt", eager_class=True,
                        config=config)
    assert response.status_code == 200, response.text
    assert profile_series(daemon, "profiled") == []   # the warm-up's timings are not served
    predict(daemon, "profiled", inputs[1])
    lines = profile_series(daemon, "profiled")
    assert sorted(line.split("{", 1)[0] for line in lines) == [
        "ts_handler_inference", "ts_handler_postprocess", "ts_handler_preprocess"]
    for line in lines:
        assert f'Hostname="{HOST}"' in line and 0 <= float(line.rsplit(" ", 1)[1]) < 10_000
    unregister(daemon, "profiled")


def test_enable_torch_profiler_in_the_servers_environment_traces_batches(tmp_path,
                                                                        exported_mlp):
    """TorchServe's ENABLE_TORCH_PROFILER reaches the workers (forked by the zygote the daemon
    started): BaseHandler writes each batch's trace under /tmp/pytorch_profiler/<model>."""
    name = f"profiler-{os.getpid()}"   # a directory of its own in TorchServe's fixed root
    traces = Path("/tmp/pytorch_profiler") / name
    (tmp_path / "store").mkdir()
    d = Daemon(tmp_path, tmp_path / "store", env={"ENABLE_TORCH_PROFILER": "TRUE"})
    try:
        d.start()
        assert register(d, name, exported_mlp.folder / "mlp.pt", eager_class=True).status_code \
            == 200
        expected = exported_mlp.expected()
        close(predict(d, name, expected["inputs"][0]), expected["outputs"][0])
        # the trace is written before the batch's answer leaves the worker
        assert list(traces.glob("*.pt.trace.json")), list(traces.parent.iterdir())
        wait_until(lambda: "profile of the batch" in d.log(), 30, 0.1,
                   "the batch's operator table in the log")   # forwarded after the answer
    finally:
        d.cleanup()
        shutil.rmtree(traces, ignore_errors=True)


# Last: the AOTInductor files build in the background while the tests above run.
@pytest.mark.parametrize(("name", "file", "config", "kind"), [
    ("aotipackage", "mlp.pt2", None, "aoti_package"),
    ("aotlibrary", "mlp.so", {"pt2": {"export": {"aot_compile": True}}}, "aot_library"),
])
def test_aotinductor_archives_answer_as_eager(daemon, exported_mlp, name, file, config, kind):
    response = register(daemon, name, exported_mlp.aoti() / file, config=config)
    assert response.status_code == 200, response.text
    metadata = described(daemon, name)
    assert (metadata["format"], metadata["compiled_backend"]) == (kind, None)
    assert_answers_as_eager(daemon, name, exported_mlp.expected())
    unregister(daemon, name)
