"""shutdown_delay: on SIGTERM readiness is false at once, requests are still served for that
many seconds (a Service or load balancer stops routing here meanwhile), then the usual drain."""
from __future__ import annotations

import signal
import time

import pytest

from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)
DELAY = 2.0


def test_sigterm_with_shutdown_delay_keeps_serving_while_not_ready(make_daemon) -> None:
    d = make_daemon({"shutdown_delay": DELAY})
    assert d.register("noop.mar", model_name="late", initial_workers=1).status_code == 200
    assert d.infer("GET", "/v2/health/ready").status_code == 200
    d.signal(signal.SIGTERM)
    signalled = time.monotonic()
    # the signal is handled on the daemon's next loop turn: well within half a second
    wait_until(lambda: d.infer("GET", "/v2/health/ready", timeout=5).status_code == 503, 0.5,
               0.02, "readiness 503 after SIGTERM")
    ping = d.infer("GET", "/ping", timeout=5)
    assert (ping.status_code, ping.json()) == (500, {"status": "Unhealthy"})
    assert d.infer("GET", "/v2/health/ready").json() == {"ready": False}
    assert d.infer("GET", "/v2/health/live").status_code == 200
    time.sleep(max(0.0, signalled + 1.0 - time.monotonic()))
    prediction = d.infer("POST", "/predictions/late", data=b"x", timeout=10)
    assert prediction.status_code == 200, prediction.text
    assert d.proc.wait(60) == 0
    assert time.monotonic() - signalled >= DELAY
    assert "serving 2 s more (shutdown_delay)" in d.log()
    assert "torchd stopped" in d.log()


def test_without_shutdown_delay_the_listener_closes_at_once(make_daemon) -> None:
    d = make_daemon()
    d.signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert d.proc.wait(60) == 0
    assert time.monotonic() - signalled < DELAY
    assert "shutdown_delay" not in d.log()
