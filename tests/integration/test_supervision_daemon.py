"""The daemon's own death: SIGKILL leaves no orphans, SIGTERM drains in-flight work first."""
from __future__ import annotations

import signal
import time

from daemon.osutil import pid_gone as gone
from tests.support.daemon import Daemon
from tests.support.supervision import ZYGOTE_TITLE, descendants, in_background, post, title
from tests.support.waiting import wait_until


def busy(d: Daemon, name: str, seconds: float, timeout: float = 30):
    join = in_background(lambda: post(d, f"/predictions/{name}", {"sleep": seconds}, timeout))
    wait_until(lambda: d.describe(name)[0]["jobQueueStatus"]["pendingRequests"] == 0, 5)
    time.sleep(0.4)
    return join


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


def test_sigterm_drains_in_flight_requests_and_exits_0(make_daemon) -> None:
    d = make_daemon()
    assert d.register("sleep.mar", model_name="term", initial_workers=1).status_code == 200
    join = busy(d, "term", 2)
    procs = descendants(d)
    d.signal(signal.SIGTERM)
    call = join()
    assert call.status == 200 and call.body == {"slept": 2.0}, call
    assert d.proc.wait(30) == 0
    wait_until(lambda: all(gone(p.pid) for p in procs), 5, what="every descendant gone")
    assert "torchd stopped" in d.log()
