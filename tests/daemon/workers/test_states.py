"""The worker state machine's table and the restart policy, without any process."""
from __future__ import annotations

import itertools

import pytest

from daemon.workers.states import (
    SLOT_STATES, TRANSITIONS, IllegalTransition, RestartPolicy, WorkerState, check_transition)
from daemon.workers.handle import WorkerHandle

S = WorkerState
# The contract, spelled out pair by pair (not derived from the table under test).
LEGAL = {
    (S.STARTING, S.READY), (S.STARTING, S.STOPPING), (S.STARTING, S.STOPPED),
    (S.STARTING, S.BACKOFF), (S.STARTING, S.FAILED),
    (S.READY, S.STOPPING), (S.READY, S.STOPPED), (S.READY, S.BACKOFF),
    (S.READY, S.FAILED),                      # its GPU vanished: no restart
    (S.STOPPING, S.STOPPED),
    (S.BACKOFF, S.STOPPED),
    (S.FAILED, S.STOPPED),
}
ALL_PAIRS = list(itertools.product(WorkerState, repeat=2))


def test_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == set(WorkerState)


@pytest.mark.parametrize(("current", "new"), sorted(LEGAL, key=str))
def test_legal_transition(current: WorkerState, new: WorkerState) -> None:
    check_transition(current, new)
    assert new in TRANSITIONS[current]


@pytest.mark.parametrize(("current", "new"),
                         sorted((p for p in ALL_PAIRS if p not in LEGAL), key=str))
def test_illegal_transition(current: WorkerState, new: WorkerState) -> None:
    with pytest.raises(IllegalTransition, match=f"from {current.value} to {new.value}"):
        check_transition(current, new)


def test_stopped_is_final_and_nothing_returns_to_starting() -> None:
    assert TRANSITIONS[S.STOPPED] == frozenset()
    assert not any(S.STARTING in targets for targets in TRANSITIONS.values())


def test_slot_states() -> None:
    # A stopping worker gives its slot up (a replacement may start beside it); a failed one
    # keeps it, so a broken model is not restarted in a loop.
    assert SLOT_STATES == {S.STARTING, S.READY, S.BACKOFF, S.FAILED}


def test_handle_move_checks_the_table() -> None:
    handle = WorkerHandle(id="9000", mv=None, slot=0)  # type: ignore[arg-type]
    handle.move(S.READY)
    with pytest.raises(IllegalTransition):
        handle.move(S.STARTING)
    assert handle.state is S.READY
    handle.move(S.STOPPING)
    handle.move(S.STOPPED)
    assert handle.state is S.STOPPED


# ---- RestartPolicy -------------------------------------------------------------------------

def test_delays_double_from_an_immediate_first_restart_and_cap_at_30() -> None:
    policy = RestartPolicy()
    delays = [policy.delay(n) for n in range(1, 11)]
    assert delays == [0, 1, 2, 4, 8, 16, 30, 30, 30, 30]


def test_no_failure_means_no_delay() -> None:
    assert RestartPolicy().delay(0) == 0


def test_cap_is_configurable() -> None:
    assert [RestartPolicy(cap=3).delay(n) for n in range(1, 6)] == [0, 1, 2, 3, 3]


def test_gives_up_after_max_start_failures() -> None:
    policy = RestartPolicy(max_start_failures=3)
    assert [policy.gives_up(n) for n in range(5)] == [False, False, False, True, True]
