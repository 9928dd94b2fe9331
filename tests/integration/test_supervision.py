"""Supervision with real processes (issue 5): crashes under load, scaling, FAILED models,
autoscaling, drains, the heartbeat and the zygote.

One zygote-mode daemon serves the whole module (tests register their own models and remove
them); settings are short where the behaviour is about time.
"""
from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import psutil
import pytest
import requests

from daemon.osutil import pid_gone as gone
from tests.support.daemon import Daemon, running_daemon
from tests.support.supervision import (
    Call,
    Load,
    busy,
    descendants,
    in_background,
    post,
    ready_pids,
    scale,
    title,
    zygote_pids,
)
from tests.support.waiting import wait_until

SETTINGS = {"heartbeat_interval": 1, "autoscale_up_delay": 0.5, "autoscale_down_delay": 2}
ZYGOTE_WARM = 60.0      # a loaded 2-core machine can take long to import torch


@pytest.fixture(scope="module")
def sv(archive_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    with running_daemon(archive_dir, tmp_path_factory.mktemp("supervision"), SETTINGS) as daemon:
        yield daemon


def register(d: Daemon, archive: str, name: str, workers: int = 1, **params) -> None:
    response = d.register(archive, model_name=name, initial_workers=workers, **params)
    assert response.status_code == 200, response.text


def unregister(d: Daemon, *names: str) -> None:
    for name in names:
        d.unregister(name)


def metric(d: Daemon, name: str, **labels: str) -> float:
    body = requests.get(d.url("metrics", "/metrics"), timeout=10).text
    total = 0.0
    for line in body.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ---- processes -----------------------------------------------------------------------------

def test_titles_and_process_tree(sv: Daemon) -> None:
    register(sv, "noop.mar", "sv_titles", workers=2)
    try:
        workers = sv.wait_workers("sv_titles", 2)
        procs = {p.pid: p for p in descendants(sv)}
        zygotes = zygote_pids(sv)
        assert len(zygotes) == 1, [title(p) for p in procs.values()]
        for worker in workers:
            proc = procs[worker["pid"]]       # a descendant of the daemon
            assert title(proc) == f"torchd worker sv_titles 1.0 {worker['id']}"
            assert proc.ppid() == zygotes[0]  # forked by the zygote, not exec-spawned
    finally:
        unregister(sv, "sv_titles")


def test_worker_killed_under_load(sv: Daemon) -> None:
    register(sv, "sleep.mar", "sv_kill", workers=2)
    try:
        before = ready_pids(sv, "sv_kill")
        victim = min(before)
        with Load(sv, "/predictions/sv_kill", {"sleep": 0.1}, threads=4) as load:
            time.sleep(1.0)
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            wait_until(lambda: len(ready_pids(sv, "sv_kill") - {victim}) == 2, 10,
                       what="a replacement READY")
            replaced_in = time.monotonic() - killed_at
            time.sleep(max(0.0, 5.0 - (time.monotonic() - load.calls[0].started)))
        assert replaced_in < 3.0
        failures = load.failures()
        assert len(failures) <= 1, failures       # only the victim's in-flight request
        for call in failures:
            assert call.status == 500 and call.body["message"] == "Worker died.", call
            assert call.is_json_error
        assert sum(1 for c in load.calls if c.status == 200) > 20
        assert gone(victim)
    finally:
        unregister(sv, "sv_kill")


def test_scale_1_5_1_under_load_loses_nothing(sv: Daemon) -> None:
    register(sv, "noop.mar", "sv_scale")
    try:
        with Load(sv, "/predictions/sv_scale", threads=4) as load:
            time.sleep(0.5)
            up = scale(sv, "sv_scale", 5)
            assert up.status_code == 200, up.text
            assert up.json() == {"status": "Workers scaled to 5 for model: sv_scale"}
            assert len(ready_pids(sv, "sv_scale")) == 5
            time.sleep(0.5)
            down = scale(sv, "sv_scale", 1)
            assert down.status_code == 200, down.text
            assert [w["status"] for w in sv.workers("sv_scale")] == ["READY"]
            time.sleep(0.5)
        assert load.failures() == []
        assert len(load.calls) > 20
    finally:
        unregister(sv, "sv_scale")


def test_response_timeout_fails_the_batch_and_replaces_the_worker(sv: Daemon) -> None:
    register(sv, "sleep.mar", "sv_slow", response_timeout=1)
    try:
        (victim,) = ready_pids(sv, "sv_slow")
        call = post(sv, "/predictions/sv_slow", {"sleep": 5})
        assert call.status == 504 and call.is_json_error, call
        assert call.body["type"] == "RequestTimeoutException"
        assert call.seconds < 3.0
        wait_until(lambda: ready_pids(sv, "sv_slow") - {victim}, 10, 0.1, "a replacement")
        wait_until(lambda: gone(victim), 5, what="the late worker killed")
        assert post(sv, "/predictions/sv_slow", {"sleep": 0}).status == 200
    finally:
        unregister(sv, "sv_slow")


# ---- FAILED --------------------------------------------------------------------------------

def failed_worker(d: Daemon, name: str) -> dict | None:
    workers = d.workers(name)
    return next((w for w in workers if w["status"] == "FAILED"), None)


def test_handler_that_cannot_load_ends_failed(sv: Daemon) -> None:
    response = sv.register("fail_load.mar", model_name="sv_fail", initial_workers=1,
                           synchronous="false")
    assert response.status_code == 202, response.text
    register(sv, "noop.mar", "sv_other")
    try:
        worker = wait_until(lambda: failed_worker(sv, "sv_fail"), 30, 0.1, "FAILED")
        assert "torchd_no_such_module" in worker["lastError"]
        assert len(sv.workers("sv_fail")) == 1
        assert re.search(r"FAILED after \d+ start failures: .*torchd_no_such_module", sv.log())
        assert post(sv, "/predictions/sv_other").status == 200      # others keep serving
        assert post(sv, "/predictions/sv_fail").status == 503
        assert sv.infer("GET", "/ping").json() == {"status": "Unhealthy"}
        assert metric(sv, "torchd_workers", model_name="sv_fail", state="FAILED") == 1

        again = scale(sv, "sv_fail", 1, synchronous=False)         # another try
        assert again.status_code == 202
        assert failed_worker(sv, "sv_fail") is None
        wait_until(lambda: failed_worker(sv, "sv_fail"), 30, 0.1, "FAILED again")
        assert len(re.findall(r"sv_fail 1.0 FAILED after", sv.log())) == 2

        sync = scale(sv, "sv_fail", 1)
        assert sync.status_code == 500
        assert "torchd_no_such_module" in sync.json()["message"]
    finally:
        unregister(sv, "sv_fail", "sv_other")
    assert sv.infer("GET", "/ping").json() == {"status": "Healthy"}


# ---- autoscaling ---------------------------------------------------------------------------

def test_autoscale_up_under_burst_and_down_after(sv: Daemon) -> None:
    register(sv, "sleep.mar", "sv_auto")
    assert scale(sv, "sv_auto", 1, 3).status_code == 200
    up_before = metric(sv, "torchd_autoscale_events_total", model_name="sv_auto",
                       direction="up")
    seen: list[int] = []

    def sample() -> None:
        live = [w for w in sv.workers("sv_auto") if w["status"] != "STOPPING"]
        seen.append(len(live))

    try:
        with Load(sv, "/predictions/sv_auto", {"sleep": 0.3}, threads=6) as load:
            wait_until(lambda: (sample(), seen[-1] >= 2)[1], 20, 0.1, "scaled up")
        wait_until(lambda: (sample(), seen[-1] == 1)[1], 20, 0.2, "scaled back to 1")
        assert all(1 <= n <= 3 for n in seen), seen
        assert load.failures() == []
        assert metric(sv, "torchd_autoscale_events_total", model_name="sv_auto",
                      direction="up") - up_before >= 1
        assert metric(sv, "torchd_autoscale_events_total", model_name="sv_auto",
                      direction="down") >= 1
    finally:
        unregister(sv, "sv_auto")


# ---- drain ---------------------------------------------------------------------------------

def scale_to_zero_while_busy(d: Daemon, name: str, seconds: float,
                             timeout: float) -> tuple[Call, float, float]:
    """Scale a one-worker sleep model to 0 (``timeout``) while its worker runs a request of
    ``seconds``: the request's answer, and when the scale call was made and returned."""
    register(d, "sleep.mar", name)
    try:
        join = busy(d, name, seconds)
        asked = time.monotonic()
        response = scale(d, name, 0, timeout=timeout)
        returned = time.monotonic()
        assert response.status_code == 200, response.text
        call = join()
        assert d.workers(name) == []
        return call, asked, returned
    finally:
        unregister(d, name)


def test_scale_down_lets_the_in_flight_batch_finish(sv: Daemon) -> None:
    call, asked, returned = scale_to_zero_while_busy(sv, "sv_drain", 2, timeout=10)
    assert call.status == 200 and call.body == {"slept": 2.0}, call
    assert returned - asked > 1.0          # the scale call waited for it


def test_scale_down_with_timeout_zero_stops_at_once(sv: Daemon) -> None:
    call, _, returned = scale_to_zero_while_busy(sv, "sv_now", 5, timeout=0)
    assert 500 <= call.status < 600 and call.is_json_error, call
    assert call.started + call.seconds - returned < 1.0


def test_scale_down_timeout_cuts_a_longer_batch_short(sv: Daemon) -> None:
    call, asked, _ = scale_to_zero_while_busy(sv, "sv_cut", 6, timeout=1)
    assert call.status == 503 and "was stopped before the request finished" in \
        call.body["message"], call
    assert 0.8 < call.started + call.seconds - asked < 3.5   # at the 1 s stop deadline


def test_queued_requests_on_scale_down(sv: Daemon) -> None:
    register(sv, "sleep.mar", "sv_queue", workers=2)
    try:
        long = [busy(sv, "sv_queue", 1.5) for _ in range(2)]
        short = [in_background(lambda: post(sv, "/predictions/sv_queue", {"sleep": 0.1}))
                 for _ in range(2)]
        wait_until(lambda: sv.describe("sv_queue")[0]["jobQueueStatus"]["pendingRequests"]
                   == 2, 5)
        assert scale(sv, "sv_queue", 1, timeout=10).status_code == 200
        assert [j().status for j in long + short] == [200] * 4   # the survivor took them

        long = busy(sv, "sv_queue", 1.5)
        short = [in_background(lambda: post(sv, "/predictions/sv_queue", {"sleep": 0.1}))
                 for _ in range(2)]
        wait_until(lambda: sv.describe("sv_queue")[0]["jobQueueStatus"]["pendingRequests"]
                   == 2, 5)
        asked = time.monotonic()
        assert scale(sv, "sv_queue", 0, timeout=10).status_code == 200
        assert long().status == 200
        for join in short:                                        # nobody left: 503 at once
            call = join()
            assert call.status == 503 and call.is_json_error, call
            assert call.started + call.seconds - asked < 1.0
    finally:
        unregister(sv, "sv_queue")


def test_unregister_finishes_in_flight_work(sv: Daemon) -> None:
    register(sv, "sleep.mar", "sv_unreg")
    join = busy(sv, "sv_unreg", 2)
    queued = in_background(lambda: post(sv, "/predictions/sv_unreg", {"sleep": 0.1}))
    wait_until(lambda: sv.describe("sv_unreg")[0]["jobQueueStatus"]["pendingRequests"] == 1, 5)
    asked = time.monotonic()
    response = sv.unregister("sv_unreg")
    assert response.status_code == 200, response.text
    call = join()
    assert call.status == 200 and call.body == {"slept": 2.0}, call
    late = queued()
    assert late.status == 503 and late.is_json_error, late
    assert late.started + late.seconds - asked < 1.0     # answered at once, not after the drain


# ---- heartbeat -----------------------------------------------------------------------------

def test_hung_worker_is_detected_and_replaced(sv: Daemon) -> None:
    register(sv, "noop.mar", "sv_hung")
    (victim,) = ready_pids(sv, "sv_hung")
    try:
        os.kill(victim, signal.SIGSTOP)
        stopped_at = time.monotonic()
        wait_until(lambda: ready_pids(sv, "sv_hung") - {victim}, 10, 0.1, "a replacement")
        detected_in = time.monotonic() - stopped_at
        # Detection after about two heartbeat intervals (1 s), plus the replacement's start.
        assert detected_in < 4.5, detected_in
        wait_until(lambda: gone(victim), 5, what="the hung worker killed")
        assert "missed its heartbeat" in sv.log()
        assert post(sv, "/predictions/sv_hung").status == 200
    finally:
        if not gone(victim):
            os.kill(victim, signal.SIGKILL)
        unregister(sv, "sv_hung")


# ---- the zygote (last: it kills the module daemon's zygote) --------------------------------

def _ready_zygote(d: Daemon) -> int | None:
    """The zygote's pid once it forks (a warming one makes spawns wait before asking)."""
    ready = [int(pid) for pid in re.findall(r"zygote ready, pid (\d+)", d.log())]
    return ready[-1] if ready and ready[-1] in zygote_pids(d) else None


def test_a_worker_stopped_while_the_zygote_forks_it_is_not_left_running(sv: Daemon) -> None:
    """A scale-down (or unregister) that stops a worker whose fork is under way: the process
    the zygote forks afterwards belongs to no worker, and is killed, not left running."""
    response = sv.register("noop.mar", model_name="sv_abandon", initial_workers=0)
    assert response.status_code == 200, response.text
    zygote = wait_until(lambda: _ready_zygote(sv), ZYGOTE_WARM, 0.1, "the zygote ready")
    os.kill(zygote, signal.SIGSTOP)   # it takes the SPAWN frame, and answers it later
    try:
        assert sv.mgmt("PUT", "/models/sv_abandon", params={"min_worker": 1}).status_code == 202
        (starting,) = wait_until(lambda: sv.workers("sv_abandon"), 10, 0.05, "a STARTING worker")
        assert starting["status"] == "STARTING"
        assert scale(sv, "sv_abandon", 0).status_code == 200
        assert sv.workers("sv_abandon") == []
    finally:
        os.kill(zygote, signal.SIGCONT)
    try:
        forked = wait_until(lambda: re.search(rf"forked worker {starting['id']} as pid (\d+)",
                                              sv.log()), 30, 0.1, "the zygote's late fork")
        wait_until(lambda: gone(int(forked.group(1))), 10, 0.1, "the late fork killed")
        assert f"forked for {starting['id']} after its start was abandoned" in sv.log()
        assert post(sv, "/predictions/sv_abandon").status == 503   # no worker, as asked
    finally:
        for proc in descendants(sv):
            if "sv_abandon" in title(proc):
                proc.kill()
        unregister(sv, "sv_abandon")


def test_zygote_killed_workers_keep_serving_and_it_comes_back(sv: Daemon) -> None:
    register(sv, "noop.mar", "sv_zyg")
    try:
        (old_zygote,) = zygote_pids(sv)
        (worker,) = ready_pids(sv, "sv_zyg")
        os.kill(old_zygote, signal.SIGKILL)
        for _ in range(5):
            assert post(sv, "/predictions/sv_zyg").status == 200
        new_zygote = wait_until(lambda: [p for p in zygote_pids(sv) if p != old_zygote],
                                ZYGOTE_WARM, 0.1, "a new zygote")[0]
        # The orphaned worker re-parented to the daemon (a child subreaper).
        assert psutil.Process(worker).ppid() == sv.pid
        assert scale(sv, "sv_zyg", 2).status_code == 200
        (fresh,) = ready_pids(sv, "sv_zyg") - {worker}
        assert psutil.Process(fresh).ppid() == new_zygote       # forked by the new zygote
        assert {worker, fresh} <= {p.pid for p in descendants(sv)}
        assert scale(sv, "sv_zyg", 0).status_code == 200
        # Both stopped workers were reaped: by the new zygote, and by the daemon itself.
        wait_until(lambda: not {worker, fresh} & {p.pid for p in descendants(sv)}, 5,
                   what="stopped workers reaped")
    finally:
        unregister(sv, "sv_zyg")
