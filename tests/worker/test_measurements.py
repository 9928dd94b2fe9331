"""Zygote fork vs exec spawn: time until LOADED, and private memory (USS) after one predict."""
from __future__ import annotations

import time

import psutil

from tests.worker.harness import json_request

MB = 1024 * 1024


def start_and_measure(spawn, model_dir, mode: str) -> tuple[float, int]:
    started = time.monotonic()
    worker = spawn(mode)
    answer = worker.load(model_dir)
    seconds = time.monotonic() - started
    assert answer["ok"], answer
    _, result = worker.predict([json_request("r", [1.0, 2.0, 3.0, 4.0])])
    assert result["responses"][0]["status"] == 200
    return seconds, psutil.Process(worker.pid).memory_full_info().uss


def test_fork_is_faster_and_leaner_than_exec(spawn, store, zygote, capsys):
    model_dir = store.model_dir("mlp_script")
    start_and_measure(spawn, model_dir, "zygote")  # first fork pays one-off page faults
    fork_s, fork_uss = start_and_measure(spawn, model_dir, "zygote")
    exec_s, exec_uss = start_and_measure(spawn, model_dir, "exec")
    with capsys.disabled():
        print(f"\n[measure] spawn->LOADED (TorchScript MLP): zygote fork {fork_s * 1000:.0f} ms, "
              f"exec {exec_s * 1000:.0f} ms; USS after one predict: fork "
              f"{fork_uss / MB:.1f} MB, exec {exec_uss / MB:.1f} MB")
    assert fork_s < exec_s
    assert fork_uss < exec_uss / 2
