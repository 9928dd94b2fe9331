"""A fork server's SPAWNED answer (daemon/workers/launcher.dispatch_fork_reply), with real
child processes: it settles the spawn that awaits it, and a child forked for a spawn nobody
awaits any more (its worker stopped meanwhile) is killed, never left running unowned."""
from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from daemon.workers.launcher import dispatch_fork_reply
from protocol import messages


@pytest.fixture
def child() -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait(10)


def no_exit(pid: int, returncode: int) -> None:
    raise AssertionError("not an exit report")


@pytest.mark.parametrize("given_up", ["cancelled", "forgotten"])
def test_a_child_forked_for_a_spawn_given_up_is_killed(child: subprocess.Popen, given_up: str):
    loop = asyncio.new_event_loop()
    try:
        pending = {}
        if given_up == "cancelled":   # the awaiting start was stopped, or its wait ran out
            pending["9001"] = loop.create_future()
            pending["9001"].cancel()
        dispatch_fork_reply(messages.spawned("9001", child.pid), pending, no_exit)
        assert child.wait(10) == -signal.SIGKILL
        assert pending == {}
    finally:
        loop.close()


def test_an_awaited_fork_gets_its_pid_and_its_child_lives(child: subprocess.Popen):
    loop = asyncio.new_event_loop()
    try:
        future = loop.create_future()
        pending = {"9002": future}
        dispatch_fork_reply(messages.spawned("9002", child.pid), pending, no_exit)
        assert future.result() == child.pid and pending == {}
        assert child.poll() is None
    finally:
        loop.close()
