"""Exec-spawned workers (``worker_spawn=exec``) and worker recycling
(``max_requests_per_worker=3``), on one daemon; its last test kills it with SIGKILL."""
from __future__ import annotations

import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from daemon.osutil import pid_gone as gone
from daemon.osutil import usable_cpus
from tests.support.daemon import Daemon, running_daemon
from tests.support.supervision import ZYGOTE_TITLE, Load, descendants, ready_pids, title
from tests.support.waiting import wait_until

SETTINGS = {"worker_spawn": "exec", "max_requests_per_worker": 3}


@pytest.fixture(scope="module")
def ex(archive_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    with running_daemon(archive_dir, tmp_path_factory.mktemp("supervision-exec"),
                        SETTINGS) as daemon:
        yield daemon


def test_exec_workers_are_titled_children_of_the_daemon(ex: Daemon) -> None:
    assert ex.register("noop.mar", model_name="ex_titles", initial_workers=2).status_code == 200
    try:
        workers = ex.wait_workers("ex_titles", 2)
        procs = {p.pid: p for p in descendants(ex)}
        assert ZYGOTE_TITLE not in [title(p) for p in procs.values()]
        for worker in workers:
            proc = procs[worker["pid"]]
            assert title(proc) == f"torchd worker ex_titles 1.0 {worker['id']}"
            assert proc.ppid() == ex.pid
        assert ex.infer("POST", "/predictions/ex_titles").json() == {"ok": 1}
        (victim, _) = sorted(ready_pids(ex, "ex_titles"))
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(ready_pids(ex, "ex_titles") - {victim}) == 2, 15, 0.1,
                   "a replacement")
    finally:
        ex.unregister("ex_titles")


def test_recycled_worker_is_replaced_before_it_retires(ex: Daemon) -> None:
    assert ex.register("noop.mar", model_name="ex_recycle", initial_workers=1).status_code == 200
    try:
        (first,) = ex.workers("ex_recycle")
        with Load(ex, "/predictions/ex_recycle", threads=2) as load:
            wait_until(lambda: f"worker {first['id']} stopped" in ex.log(), 20, 0.1,
                       "the first worker recycled")
            time.sleep(0.5)
        assert load.failures() == []
        log = ex.log()
        stopped = log.index(f"worker {first['id']} stopped")
        ready = [int(m.group(1)) for m in re.finditer(r"worker (\d+) READY", log[:stopped])]
        assert any(wid > int(first["id"]) for wid in ready), "stopped before a replacement"
        wait_until(lambda: len(ready_pids(ex, "ex_recycle")) == 1, 15, 0.1, "one READY")
        assert gone(first["pid"])
    finally:
        ex.unregister("ex_recycle")

def test_exec_workers_get_their_thread_share_before_torch_loads(ex: Daemon) -> None:
    """An exec-spawned worker also hears its share through OMP_NUM_THREADS/MKL_NUM_THREADS,
    which the OpenMP runtime reads as torch loads it (before any LOAD frame)."""
    assert ex.register("threads.mar", model_name="ex_threads",
                       initial_workers=2).status_code == 200
    try:
        share = str(max(1, usable_cpus() // 2))
        answers = []
        with ThreadPoolExecutor(2) as pool:   # each request holds a worker: both answer
            for _ in range(10):
                batch = list(pool.map(lambda _: ex.infer(
                    "POST", "/predictions/ex_threads", data=b"sleep0.3").json(), range(2)))
                answers += batch
                if len({a["pid"] for a in answers}) == 2:
                    break
        assert len({a["pid"] for a in answers}) == 2
        for answer in answers:
            assert (str(answer["intra"]), str(answer["inter"]), answer["omp"]) == \
                (share, share, share)
    finally:
        ex.unregister("ex_threads")



def test_sigkill_exec_daemon_leaves_no_worker(ex: Daemon) -> None:
    assert ex.register("noop.mar", model_name="ex_orph", initial_workers=2).status_code == 200
    procs = descendants(ex)
    assert len(procs) >= 2
    ex.kill()
    killed_at = time.monotonic()
    wait_until(lambda: all(gone(p.pid) for p in procs), 10, 0.05, "every worker gone")
    assert time.monotonic() - killed_at < 5.0
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs)
