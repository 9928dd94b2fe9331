"""preloadModel: a CPU model's workers forked from a per-version template that ran the handler's
initialize once, sharing its weights copy-on-write (~196 MiB here: tests/models/wide); a
template killed comes back while its workers serve on; scale-down and unregister leave no
template; a handler that starts a thread in initialize falls back to loading in each worker;
a failing initialize fails the registration with its cause. One daemon for the module, with
``preload_model=true`` as every model's default (the YAML key wins over it)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

from daemon.osutil import pid_gone
from tests.support.archives import MODELS, archive_source, build_archive
from tests.support.daemon import Daemon
from tests.support.supervision import descendants, title
from tests.support.waiting import wait_until

WORKERS = 4
# Threads in initialize: a fork would copy none of them, so this model cannot be preloaded.
SPINNER = '''
import os
import threading


class Spinner:
    def initialize(self, context):
        self.initialized_in = os.getpid()
        threading.Thread(target=threading.Event().wait, daemon=True).start()   # for ever

    def handle(self, data, context):
        return [{"initialized_in": self.initialized_in, "pid": os.getpid()} for _ in data]
'''
BROKEN = '''
class Broken:
    def initialize(self, context):
        raise ValueError("no weights here")

    def handle(self, data, context):
        return data
'''
PLAIN = '''
import os


def handle(data, context):
    return None if data is None else [{"pid": os.getpid()} for _ in data]
'''


@pytest.fixture(scope="module")
def wide_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """wide.pt (~196 MiB) and expected.json, written once per run."""
    out = tmp_path_factory.getbasetemp() / "wide-weights"
    if not (out / "wide.pt").exists():
        subprocess.run([sys.executable, str(MODELS / "wide" / "generate.py"), str(out)],
                       check=True, timeout=120)
    return out


@pytest.fixture(scope="module")
def daemon(wide_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    work = tmp_path_factory.mktemp("preload")
    store = work / "store"
    # no-archive: the weights are used where they lie (a .mar would deflate 196 MiB)
    build_archive("wide", store, fmt="no-archive", serialized_file=str(wide_weights / "wide.pt"),
                  config_file="preload.yaml")
    archive_source(SPINNER, "spinner", store, work / "src")
    archive_source(BROKEN, "broken", store, work / "src")
    archive_source(PLAIN, "plain", store, work / "src", config="preloadModel: false\n")
    d = Daemon(work, store, {"preload_model": "true", "default_workers_per_model": 1})
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


def expected_head(wide_weights: Path) -> list[float]:
    return json.loads((wide_weights / "expected.json").read_text())["head"]


def weights_bytes(wide_weights: Path) -> int:
    return (wide_weights / "wide.pt").stat().st_size


def template_of(d: Daemon, name: str) -> dict[str, Any] | None:
    return d.describe(name)[0].get("template")


def template_pids(d: Daemon, name: str) -> list[int]:
    """Live processes titled as ``name``'s template (found by title, checked by pid)."""
    return [p.pid for p in descendants(d) if title(p) == f"torchd template {name} 1.0"]


def answers(d: Daemon, name: str, count: int, body: Any = None) -> list[dict[str, Any]]:
    """``count`` concurrent answers (idle workers take one each; answered_by_all asks again
    until every worker has answered)."""
    def ask(_: int) -> dict[str, Any]:
        response = d.infer("POST", f"/predictions/{name}", json=body or {}, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(ask, range(count)))


def answered_by_all(d: Daemon, name: str, pids: set[int]) -> list[dict[str, Any]]:
    """Answers until every worker of ``pids`` has given one."""
    seen: dict[int, dict[str, Any]] = {}

    def all_seen() -> bool:
        seen.update((a["pid"], a) for a in answers(d, name, len(pids)))
        return pids <= set(seen)

    wait_until(all_seen, 30, 0.01, lambda: f"answers from {pids} (have {set(seen)})")
    return list(seen.values())


def register(d: Daemon, url: str, name: str, workers: int) -> None:
    response = d.register(url, model_name=name, initial_workers=workers)
    assert response.status_code == 200, response.text


def scale(d: Daemon, name: str, workers: int) -> None:
    response = d.mgmt("PUT", f"/models/{name}", params={"min_worker": workers,
                                                        "synchronous": "true"})
    assert response.status_code == 200, response.text
    d.wait_workers(name, workers)


def unregister_leaves_nothing(d: Daemon, name: str, pids: set[int]) -> None:
    """Every process gone and collected: not even a zombie is left (a worker that exits as its
    template stops would be re-parented to the daemon as one, if the template did not reap)."""
    assert d.unregister(name).status_code == 200
    wait_until(lambda: not [pid for pid in pids if psutil.pid_exists(pid)], 10,
               what=lambda: f"{name}'s processes gone and reaped: "
                            f"{[(p, status(p)) for p in pids if psutil.pid_exists(p)]}")
    assert template_pids(d, name) == []


def status(pid: int) -> str:
    try:
        proc = psutil.Process(pid)
        return f"{proc.status()}, child of {proc.ppid()}"
    except psutil.NoSuchProcess:
        return "gone"


# ---- sharing -------------------------------------------------------------------------------

def test_workers_forked_from_the_template_share_its_weights(daemon: Daemon,
                                                            wide_weights: Path) -> None:
    register(daemon, "wide", "wide", WORKERS)
    template = template_of(daemon, "wide")
    assert template is not None and template["status"] == "READY", template
    workers = daemon.workers("wide")
    pids = {w["pid"] for w in workers}
    assert len(pids) == WORKERS and all(w["template"] == template["pid"] for w in workers)
    assert all(psutil.Process(pid).ppid() == template["pid"] for pid in pids)
    assert all(title(psutil.Process(pid)).startswith("torchd worker wide 1.0 ") for pid in pids)
    for answer in answered_by_all(daemon, "wide", pids):
        assert answer["head"] == pytest.approx(expected_head(wide_weights), rel=1e-4)
        assert answer["initialized_in"] == template["pid"]   # initialize ran once, there

    size = weights_bytes(wide_weights)
    uss = sum(psutil.Process(pid).memory_full_info().uss for pid in pids)
    template_rss = psutil.Process(template["pid"]).memory_info().rss
    print(f"\n4 workers' USS {uss / 2**20:.1f} MiB; template RSS {template_rss / 2**20:.1f} "
          f"MiB; weights {size / 2**20:.1f} MiB")
    assert template_rss > size             # the template holds the weights ...
    assert uss < 1.3 * size, (uss, size)   # ... and the workers hold no copy of their own
    assert 0 < template["memoryUsage"] and all(w["memoryUsage"] > size for w in workers)
    unregister_leaves_nothing(daemon, "wide", pids | {template["pid"]})


def test_a_killed_template_comes_back_and_its_workers_serve_on(daemon: Daemon) -> None:
    register(daemon, "wide", "wide_kill", 2)
    old = template_of(daemon, "wide_kill")
    assert old is not None
    workers = {w["pid"] for w in daemon.workers("wide_kill")}
    os.kill(old["pid"], signal.SIGKILL)
    fresh = wait_until(lambda: (t := template_of(daemon, "wide_kill")) and t["pid"] != old["pid"]
                       and t["status"] == "READY" and t, 30, 0.1, "a new READY template")
    # the orphaned workers are the daemon's children now, and serve on
    assert all(psutil.Process(pid).ppid() == daemon.pid for pid in workers)
    answered_by_all(daemon, "wide_kill", workers)
    assert f"wide_kill 1.0 (pid {old['pid']}) died (killed by SIGKILL)" in daemon.log()
    assert template_pids(daemon, "wide_kill") == [fresh["pid"]]

    scale(daemon, "wide_kill", 3)
    (newcomer,) = [w for w in daemon.workers("wide_kill") if w["pid"] not in workers]
    assert newcomer["template"] == fresh["pid"]
    assert psutil.Process(newcomer["pid"]).ppid() == fresh["pid"]
    answered_by_all(daemon, "wide_kill", workers | {newcomer["pid"]})
    unregister_leaves_nothing(daemon, "wide_kill", workers | {newcomer["pid"], fresh["pid"]})


def test_scaling_to_zero_stops_the_template(daemon: Daemon) -> None:
    register(daemon, "wide", "wide_scale", WORKERS)
    template = template_of(daemon, "wide_scale")
    assert template is not None
    scale(daemon, "wide_scale", 1)
    assert template_of(daemon, "wide_scale") == {**template, "memoryUsage": pytest.approx(
        template["memoryUsage"], rel=0.5)}   # kept: the worker left may need replacing
    scale(daemon, "wide_scale", 0)
    # gone, then forgotten: describe shows it STOPPING until the daemon has seen it exit
    wait_until(lambda: pid_gone(template["pid"]) and template_of(daemon, "wide_scale") is None,
               10, what="the template stopped at 0 workers")
    assert template_pids(daemon, "wide_scale") == []
    unregister_leaves_nothing(daemon, "wide_scale", {template["pid"]})


# ---- where it does not apply ---------------------------------------------------------------

def test_a_handler_that_starts_a_thread_falls_back_to_loading_in_each_worker(
        daemon: Daemon) -> None:
    register(daemon, "spinner.mar", "spinner", 2)   # preloadModel from the global key
    assert "preloadModel falls back to loading the model in each worker: the handler's " \
           "initialize left 1 more thread(s) running" in daemon.log()
    wait_until(lambda: template_of(daemon, "spinner") is None, 10,
               what="the unsafe template gone")
    workers = daemon.workers("spinner")
    assert all("template" not in w for w in workers)
    for answer in answered_by_all(daemon, "spinner", {w["pid"] for w in workers}):
        assert answer["initialized_in"] == answer["pid"]
    unregister_leaves_nothing(daemon, "spinner", {w["pid"] for w in workers})


def test_a_failing_initialize_fails_the_registration_with_its_cause(daemon: Daemon) -> None:
    response = daemon.register("broken.mar", model_name="broken", initial_workers=2)
    assert response.status_code == 500, response.text
    assert response.json()["message"] == ("Failed to start workers for model broken version: "
                                          "1.0: ValueError: no weights here")
    assert daemon.mgmt("GET", "/models/broken").status_code == 404
    wait_until(lambda: template_pids(daemon, "broken") == [], 10, what="no template left")


def test_the_yaml_key_wins_over_the_global_default(daemon: Daemon) -> None:
    register(daemon, "plain.mar", "plain", 1)   # preloadModel: false in its model-config.yaml
    assert template_of(daemon, "plain") is None and template_pids(daemon, "plain") == []
    (worker,) = daemon.workers("plain")
    assert "template" not in worker
    unregister_leaves_nothing(daemon, "plain", {worker["pid"]})


# ---- last: it kills the module's daemon ----------------------------------------------------

def test_the_daemon_s_death_takes_the_template_down(daemon: Daemon) -> None:
    register(daemon, "wide", "wide_orphan", 1)
    template = template_of(daemon, "wide_orphan")
    assert template is not None
    (worker,) = daemon.workers("wide_orphan")
    daemon.kill()
    wait_until(lambda: pid_gone(template["pid"]) and pid_gone(worker["pid"]), 10,
               what="the template and its worker gone with the daemon")
