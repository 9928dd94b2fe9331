"""Workers killed under load (issue 18): while wrk keeps 16 connections busy on the MLP model
with 2 workers, one READY worker, chosen at random, is killed with SIGKILL every few seconds.

What clients saw: requests answered, requests failed (any non-2xx or socket error), the slowest
answer, and how many requests the server ran again on another worker (torchd's
torchd_redispatched_requests_total; TorchServe has no such thing and answers 500 instead).
"""
from __future__ import annotations

import os
import random
import signal
import threading
import time
from typing import Any

from .load import Load
from .rounds import check_answer
from .servers import Server

CONNECTIONS = 16
KILL_PERIOD_S = 3.0
SLOW_S = 1   # wrk counts a request unanswered after this long as a timeout


def kill_a_ready_worker(server: Server, model: str) -> bool:
    pids = server.ready_worker_pids(model)
    if not pids:
        return False
    try:
        os.kill(random.choice(pids), signal.SIGKILL)
    except ProcessLookupError:   # it died on its own meanwhile
        return False
    return True


def workers_killed_under_load(server: Server, load: Load, seconds: int) -> dict[str, Any]:
    server.register("mlp", workers=2)
    check_answer(server, "mlp")
    url = f"{server.inference}/predictions/mlp"
    outcome: dict[str, Any] = {}

    def drive() -> None:
        outcome["wrk"] = load.run(url, "mlp", CONNECTIONS, seconds, timeout_s=SLOW_S)

    wrk = threading.Thread(target=drive, name="chaos-wrk")
    wrk.start()
    kills, started = 0, time.monotonic()
    # the last kill leaves time for its replacement before wrk stops
    while wrk.is_alive() and time.monotonic() - started < seconds - KILL_PERIOD_S:
        wrk.join(KILL_PERIOD_S)
        if wrk.is_alive():
            kills += kill_a_ready_worker(server, "mlp")
    wrk.join()
    redispatched = server.redispatched("mlp")   # its series leave /metrics at unregister
    server.unregister("mlp")
    stats = outcome["wrk"]
    failed = sum(stats[k] for k in ("status", "connect", "read", "write"))
    return {"chaos_kills": kills, "chaos_requests": stats["requests"], "chaos_failed": failed,
            "chaos_timeouts": stats["timeout"], "chaos_slowest_ms": stats["max_us"] / 1000,
            "chaos_redispatched": redispatched, "chaos_wrk": stats}
