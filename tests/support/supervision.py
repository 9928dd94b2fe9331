"""Helpers for the supervision tests (tests/integration/test_supervision*.py): concurrent client
load, process lookups.

Every client call has a timeout, so a hung request shows up as a recorded error, never as a
hung test.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import psutil
import requests

from daemon.osutil import pid_gone
from tests.support.daemon import Daemon
from tests.support.ops import sample_sum, scrape
from tests.support.waiting import wait_until

CALL_TIMEOUT = 30.0
ZYGOTE_TITLE = "torchd zygote"


@dataclass
class Call:
    status: int | None        # None: the call raised (timeout, connection error)
    body: Any                 # parsed JSON, or the text when it was not JSON
    started: float
    seconds: float

    @property
    def is_json_error(self) -> bool:
        return isinstance(self.body, dict) and {"code", "type", "message"} <= set(self.body)


def post(daemon: Daemon, path: str, body: Any = None, timeout: float = CALL_TIMEOUT) -> Call:
    started = time.monotonic()
    try:
        response = requests.post(daemon.url("inference", path), json=body, timeout=timeout)
    except requests.RequestException as exc:
        return Call(None, repr(exc), started, time.monotonic() - started)
    try:
        parsed = response.json()
    except ValueError:
        parsed = response.text
    return Call(response.status_code, parsed, started, time.monotonic() - started)


class Load:
    """``threads`` clients posting ``body`` to ``path`` in a loop until the block exits."""

    def __init__(self, daemon: Daemon, path: str, body: Any = None, threads: int = 4,
                 timeout: float = CALL_TIMEOUT) -> None:
        self.daemon, self.path, self.body, self.timeout = daemon, path, body, timeout
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    def _loop(self) -> None:
        while not self._stop.is_set():
            call = post(self.daemon, self.path, self.body, self.timeout)
            with self._lock:
                self.calls.append(call)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        assert not any(t.is_alive() for t in self._threads), "a client call never returned"

    def failures(self) -> list[Call]:
        return [c for c in self.calls if c.status != 200]


def in_background(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Run ``fn`` in a thread now; the returned function joins it and gives its result."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed to the joining test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join(timeout: float = CALL_TIMEOUT + 10) -> Any:
        thread.join(timeout)
        assert not thread.is_alive(), "background call did not return"
        if "error" in box:
            raise box["error"]
        return box["result"]

    return join


def taken(daemon: Daemon, name: str) -> int:
    """Requests of ``name`` taken from its queue by a worker (in its batch: sent, or still
    filling), read from /metrics once none waits in the queue; -1 while some do."""
    samples = scrape(daemon)
    if sample_sum(samples, "torchd_queue_depth", model_name=name):
        return -1
    return int(sample_sum(samples, "torchd_inflight_requests", model_name=name))


def wait_taken(daemon: Daemon, name: str, count: int, timeout: float = 30) -> None:
    """Until exactly ``count`` requests of ``name`` are taken by its workers, none queued."""
    wait_until(lambda: taken(daemon, name) == count, timeout,
               what=f"{count} request(s) of {name} taken by its workers, none queued")


def busy(daemon: Daemon, name: str, seconds: float,
         timeout: float = CALL_TIMEOUT) -> Callable[[], Any]:
    """Post one request to a sleep-model ``name`` that sleeps ``seconds``, in the background;
    return its join once a worker holds it."""
    held = max(0, taken(daemon, name))
    join = in_background(lambda: post(daemon, f"/predictions/{name}", {"sleep": seconds},
                                      timeout))
    wait_taken(daemon, name, held + 1)
    return join


def title(proc: psutil.Process) -> str:
    """The process title as setproctitle left it (argv rewritten, padded with NULs)."""
    try:
        return " ".join(part for part in proc.cmdline() if part).strip()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return ""


def descendants(daemon: Daemon) -> list[psutil.Process]:
    try:
        return psutil.Process(daemon.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def zygote_pids(daemon: Daemon) -> list[int]:
    return [p.pid for p in descendants(daemon) if title(p) == ZYGOTE_TITLE]


def ready_pids(daemon: Daemon, name: str, version: str | None = None) -> set[int]:
    """The pids of the READY workers that are alive: a killed worker reads READY until the
    daemon has seen it go."""
    return {w["pid"] for w in daemon.workers(name, version)
            if w["status"] == "READY" and not pid_gone(w["pid"])}


def scale(daemon: Daemon, name: str, min_worker: int, max_worker: int | None = None,
          synchronous: bool = True, timeout: float | None = None) -> requests.Response:
    params: dict[str, Any] = {"min_worker": min_worker, "synchronous": str(synchronous).lower()}
    if max_worker is not None:
        params["max_worker"] = max_worker
    if timeout is not None:
        params["timeout"] = timeout
    response = daemon.mgmt("PUT", f"/models/{name}", params=params)
    daemon.track_descendants()
    return response
