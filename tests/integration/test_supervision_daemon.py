"""The daemon's own death: SIGKILL leaves no orphans, SIGTERM (and SIGHUP) drains in-flight work
first; its files under /tmp outlive a tmp cleaner while it runs; what a handler started ends
with its worker; a stuck zygote is replaced."""
from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from daemon.osutil import pid_gone as gone
from tests.support.archives import archive_source
from tests.support.supervision import ZYGOTE_TITLE, busy, descendants, title, zygote_pids
from tests.support.waiting import wait_until


def test_sigkill_daemon_leaves_no_worker_or_zygote(make_daemon) -> None:
    d = make_daemon()
    assert d.register("noop.mar", model_name="orph_noop", initial_workers=2).status_code == 200
    assert d.register("sleep.mar", model_name="orph_busy", initial_workers=1).status_code == 200
    join = busy(d, "orph_busy", 30, timeout=10)        # one worker is inside a handler
    procs = descendants(d)
    titles = [title(p) for p in procs]
    assert ZYGOTE_TITLE in titles and len(procs) >= 4, titles
    d.kill()
    killed_at = time.monotonic()
    wait_until(lambda: all(gone(p.pid) for p in procs), 10, 0.05, "every descendant gone")
    assert time.monotonic() - killed_at < 5.0
    assert join().status is None                        # the client saw the connection drop


# SIGTERM as systemd and Kubernetes send it, to the daemon; SIGINT and SIGHUP as a terminal
# sends them (Ctrl-C, a closed SSH session), to its whole foreground process group. SIGHUP stops
# it as TorchServe's JVM stops on it, not with Python's sudden death; and the zygote and workers,
# in a session of their own, do not take the terminal's signals and die mid-batch.
@pytest.mark.parametrize("sig, group", [(signal.SIGTERM, False), (signal.SIGINT, True),
                                        (signal.SIGHUP, True)], ids=["SIGTERM", "ctrl-c",
                                                                     "hang-up"])
def test_sigterm_drains_in_flight_requests_and_exits_0(make_daemon, sig, group) -> None:
    d = make_daemon()
    assert d.register("sleep.mar", model_name="term", initial_workers=1).status_code == 200
    join = busy(d, "term", 2)
    procs = descendants(d)
    if group:
        os.killpg(d.pid, sig)   # the daemon leads its group (the test starts it so)
    else:
        d.signal(sig)
    call = join()
    assert call.status == 200 and call.body == {"slept": 2.0}, call
    assert d.proc.wait(30) == 0
    wait_until(lambda: all(gone(p.pid) for p in procs), 5, what="every descendant gone")
    log = d.log()
    assert f"{sig.name} received: stopping" in log and "torchd stopped" in log
    assert " died" not in log and "Traceback" not in log, log[-3000:]


def test_a_second_ctrl_c_exits_at_once(make_daemon) -> None:
    """Someone at the terminal will not wait out a busy worker's drain: the second SIGINT ends
    the daemon now, and its zygote and workers follow it."""
    d = make_daemon()
    assert d.register("sleep.mar", model_name="impatient", initial_workers=1).status_code == 200
    join = busy(d, "impatient", 60)   # would hold the graceful stop for a minute
    procs = descendants(d)
    os.killpg(d.pid, signal.SIGINT)
    wait_until(lambda: "SIGINT received: stopping" in d.log(), 10, 0.05, "the stop begun")
    os.killpg(d.pid, signal.SIGINT)
    assert d.proc.wait(10) == 130
    wait_until(lambda: all(gone(p.pid) for p in procs), 10, 0.05, "every descendant gone")
    assert "SIGINT again: exiting now, without waiting for the drain" in d.log()
    assert join().status is None                        # the client saw the connection drop


def test_a_stuck_zygote_is_replaced(make_daemon) -> None:
    """A zygote that answers no spawn (stopped here; deadlocked in life) is killed once a spawn
    runs out of startup_timeout, and a fresh one forks the workers: before, each retry asked
    the stuck one again until the version was FAILED."""
    d = make_daemon({"default_startup_timeout": 3})
    assert d.register("noop.mar", model_name="stuck", initial_workers=1,
                      synchronous="true").status_code == 200
    (zygote,) = zygote_pids(d)
    os.kill(zygote, signal.SIGSTOP)
    assert d.mgmt("PUT", "/models/stuck?min_worker=2").status_code == 202
    wait_until(lambda: [w["status"] for w in d.workers("stuck")] == ["READY", "READY"], 60,
               0.1, "two READY workers, one forked by a fresh zygote")
    assert gone(zygote) and len(zygote_pids(d)) == 1
    assert f"zygote (pid {zygote}) has answered no spawn for" in d.log()


def test_idle_keep_alive_connections_do_not_hold_up_sigterm(make_daemon) -> None:
    """A load balancer keeps idle keep-alive connections open to every port: SIGTERM closes
    them at once rather than waiting out the HTTP grace period (30 s) for them."""
    d = make_daemon()
    assert d.register("noop.mar", model_name="idle_ka", initial_workers=1).status_code == 200
    connections = []
    for api, method, path in (("inference", "POST", "/predictions/idle_ka"),
                              ("management", "GET", "/models"), ("metrics", "GET", "/metrics")):
        conn = http.client.HTTPConnection("127.0.0.1", d.ports[api], timeout=30)
        conn.request(method, path, body=b"{}" if method == "POST" else None)
        response = conn.getresponse()
        response.read()
        assert response.status == 200 and not response.will_close, (api, response.status)
        connections.append(conn)   # open, idle, kept alive
    signalled = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.proc.wait(30) == 0
    assert time.monotonic() - signalled < 10.0, "idle connections held the shutdown up"
    for conn in connections:
        conn.close()


def test_a_tmp_cleaner_leaves_a_running_daemons_files_alone(make_daemon, tmp_path,
                                                            request) -> None:
    """systemd-tmpfiles ages /tmp (10 days; the unit's PrivateTmp too): an archive extracted at
    start and not read since went with it, and the next worker start failed for good. The
    daemon's runtime dir is locked (flock), which the cleaner skips; here it cleans at age 0."""
    # a short TMPDIR (pytest's tmp_path is too long for the workers' AF_UNIX socket paths)
    tmp = Path(tempfile.mkdtemp(prefix="torchd-test-tmp-"))
    request.addfinalizer(lambda: shutil.rmtree(tmp, ignore_errors=True))
    d = make_daemon(env={"TMPDIR": str(tmp)})
    answer = d.register("noop.mar", model_name="aged", initial_workers=1, synchronous="true")
    assert answer.status_code == 200, answer.text
    before = sorted(tmp.rglob("*"))
    assert any(path.name == "MANIFEST.json" for path in before), before
    rules = tmp_path / "torchd-test.conf"
    rules.write_text(f"e {tmp} - - - 0\n")
    stray = tmp / "stray"
    stray.write_text("nobody holds this")
    subprocess.run([shutil.which("systemd-tmpfiles") or "systemd-tmpfiles", "--clean",
                    str(rules)], check=True, timeout=60)
    assert not stray.exists()                    # the cleaner did run
    assert sorted(tmp.rglob("*")) == before
    (worker,) = d.workers("aged")
    os.kill(worker["pid"], signal.SIGKILL)       # the replacement loads from the same files
    wait_until(lambda: [w["status"] for w in d.workers("aged")
                        if w["pid"] != worker["pid"]] == ["READY"], 30, 0.05,
               "a replacement READY")
    assert d.infer("POST", "/predictions/aged", data=b"x").status_code == 200


SPAWNER = '''
import subprocess

children = []


def handle(data, context):
    if data is None:   # at load: a helper process, as handlers start ffmpeg or a pool
        children.append(subprocess.Popen(["sleep", "600"]))
        return None
    return [children[-1].pid for _ in data]
'''


def test_what_a_handler_started_ends_with_its_worker(make_daemon) -> None:
    """Each worker leads a process group that the daemon ends with it: a handler's helper
    processes went on running (re-parented to the daemon, then to init) after the worker
    crashed, was unregistered, or lost its daemon."""
    d = make_daemon()
    archive_source(SPAWNER, "spawner", d.model_store, d.workdir / "src")
    # preloaded: the helper is the template's (its load ran there), the group the template's
    archive_source(SPAWNER, "preloaded", d.model_store, d.workdir / "src",
                   config="preloadModel: true\n")

    def helper(model: str = "spawner") -> int:
        answer = d.infer("POST", f"/predictions/{model}", data=b"x")
        assert answer.status_code == 200, answer.text
        return int(answer.text)

    assert d.register("spawner.mar", initial_workers=1, synchronous="true").status_code == 200
    first = helper()
    os.kill(d.workers("spawner")[0]["pid"], signal.SIGKILL)
    wait_until(lambda: gone(first), 10, 0.05, "the crashed worker's helper gone")
    d.wait_workers("spawner", 1)
    second = helper()
    assert d.unregister("spawner").status_code == 200
    wait_until(lambda: gone(second), 10, 0.05, "the unregistered worker's helper gone")
    assert d.register("spawner.mar", initial_workers=1, synchronous="true").status_code == 200
    third = helper()
    assert d.register("preloaded.mar", initial_workers=1, synchronous="true").status_code == 200
    assert d.describe("preloaded")[0]["template"]["status"] == "READY"
    templates = helper("preloaded")
    d.kill()   # SIGKILL: the worker and the template notice, and end their groups themselves
    wait_until(lambda: gone(third), 10, 0.05, "the helper of a worker whose daemon died gone")
    wait_until(lambda: gone(templates), 10, 0.05, "the template's helper gone")
