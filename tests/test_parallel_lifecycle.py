"""The lifecycle state machine and the per-worker statistics records."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from cllm_spec.errors import CllmError, QueueTimeoutError
from cllm_spec.parallel import Lifecycle, LifecycleError, State, WorkerStats

INIT, R, P, S, X = (
    State.INITIALIZING,
    State.RUNNING,
    State.PAUSED,
    State.STOPPING,
    State.STOPPED,
)
# Written out by hand (not read from TRANSITIONS): the only legal moves.
LEGAL = {(INIT, R), (INIT, S), (R, P), (R, S), (P, R), (P, S), (S, X)}

# A path that reaches each state from INITIALIZING.
PATH_TO = {INIT: [], R: [R], P: [R, P], S: [S], X: [S, X]}


def machine_in(state: State) -> Lifecycle:
    lc = Lifecycle()
    for s in PATH_TO[state]:
        lc.transition(s)
    assert lc.state is state
    return lc


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(State, State)))
def test_every_pair_of_states(src, dst):
    lc = machine_in(src)
    if (src, dst) in LEGAL:
        assert lc.transition(dst) is src
        assert lc.state is dst and lc.history[-1] is dst
    else:
        with pytest.raises(LifecycleError, match=f"{src.name} to {dst.name}"):
            lc.transition(dst, what="probe")
        assert lc.state is src  # an illegal move changes nothing


def test_seed11_state_sequence_and_history():
    lc = Lifecycle()
    for s in (R, P, R, S, X):
        lc.transition(s)
    assert lc.history == (INIT, R, P, R, S, X)


def test_lifecycle_error_is_typed():
    with pytest.raises(RuntimeError) as info:
        Lifecycle().transition(P)
    assert isinstance(info.value, CllmError) and isinstance(info.value, LifecycleError)


def test_expect_names_the_state():
    lc = machine_in(P)
    assert lc.expect(R, P, what="checkpoint") is P
    with pytest.raises(LifecycleError, match="PAUSED"):
        lc.expect(R, what="run_step")


def test_wait_while_paused_returns_on_resume():
    lc = machine_in(P)
    woke = threading.Event()

    def waiter():
        lc.wait_while_paused(timeout=10.0, what="test")
        woke.set()

    t = threading.Thread(target=waiter)
    t.start()
    assert not woke.wait(0.1)  # still paused
    lc.transition(R)
    t.join(10.0)
    assert woke.is_set()


def test_wait_while_paused_raises_on_stop_and_times_out():
    lc = machine_in(P)
    errors: list[BaseException] = []

    def waiter():
        try:
            lc.wait_while_paused(timeout=10.0, what="test")
        except LifecycleError as exc:
            errors.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.05)
    lc.transition(S)
    t.join(10.0)
    assert not t.is_alive() and len(errors) == 1
    with pytest.raises(QueueTimeoutError):
        machine_in(P).wait_while_paused(timeout=0.02, what="test")
    with pytest.raises(LifecycleError):
        machine_in(INIT).wait_while_paused(timeout=1.0, what="test")
    machine_in(R).wait_while_paused(timeout=0, what="test")  # returns at once


# ============================================================== stats ====
def test_stats_merge_record_total_utilization():
    a = WorkerStats(batches=2, tokens=30, busy_s=1.5, idle_s=0.5)
    b = WorkerStats(batches=1, tokens=7, busy_s=0.25, idle_s=2.0)
    assert a.merge(b) == WorkerStats(3, 37, 1.75, 2.5)
    assert a.merge(WorkerStats()) == a  # the zero record is the reset state
    assert a.record(batches=1, tokens=5, busy_s=0.5) == WorkerStats(3, 35, 2.0, 0.5)
    assert WorkerStats.total([a, b, a]) == WorkerStats(5, 67, 3.25, 3.0)
    assert WorkerStats.total([]) == WorkerStats()
    assert a.utilization == 0.75
    assert WorkerStats().utilization == 0.0
