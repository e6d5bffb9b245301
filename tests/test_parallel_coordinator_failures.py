"""Failures end a coordinator's run promptly with a typed error: a raising or
stuck worker, a malformed gradient result, no counted token, a raising
optimizer step, and an ``on_error`` callback that raises itself.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from cllm_spec.errors import (
    ConfigError,
    DTypeError,
    EmptyInputError,
    QueueTimeoutError,
    ShapeError,
)
from cllm_spec.parallel import Callbacks, Coordinator, LifecycleError, State
from tests.parallel_coordinator_helpers import (
    BACKEND,
    WAIT,
    P,
    Recorder,
    Trainer,
    assert_fully_stopped,
    batches,
    lsq_terms,
)


@pytest.mark.parametrize("n_workers", [1, 3, 12])
def test_a_failing_worker_ends_the_run_with_its_error(n_workers):
    calls = {"g7": 0}
    trainer = Trainer()

    def grad_fn(group: int, mb: tuple):
        if group == 7:
            calls["g7"] += 1
            if calls["g7"] == 3:
                raise ValueError("boom in group 7")
        if group == 2 and calls["g7"] >= 2:
            time.sleep(0.3)  # a slow sibling must not delay the error much
        return lsq_terms(trainer.w, mb)

    rec = Recorder()
    coord = Coordinator(
        n_workers,
        grad_fn,
        trainer.optimizer_step,
        backend=BACKEND,
        callbacks=[rec],
        timeout=WAIT,
    )
    coord.start()
    data = batches(1, 3, 16)
    coord.run_step(data[0][0])
    coord.run_step(data[1][0])
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="boom in group 7") as info:
        coord.run_step(data[2][0])
    assert time.monotonic() - t0 < 5.0
    owner = coord.allocation.group_to_worker[7]
    note = " ".join(getattr(info.value, "__notes__", []))
    assert f"worker {owner}" in note and "group 7" in note and "step 2" in note
    assert_fully_stopped(coord)
    assert rec.events[-1] == ("error", info.value, owner)
    assert coord.steps == 2 and len(trainer.losses) == 2  # no step 2 update
    with pytest.raises(LifecycleError):
        coord.run_step(data[0][0])
    assert coord.stop() is True  # idempotent after the failure


@pytest.mark.parametrize(
    ("bad", "error", "where"),
    [
        (lambda g, out: (out[0].astype(np.int64), out[1], out[2]), DTypeError, "w"),
        (lambda g, out: (out[0][None], out[1], out[2]), ShapeError, "w"),
        (lambda g, out: (out[0], "x", out[2]), DTypeError, "w"),
        (lambda g, out: (out[0], out[1], -1), ConfigError, "w"),
        (lambda g, out: out[:2], DTypeError, "w"),
        (lambda g, out: (out[0][: P - (g == 4)], *out[1:]), ShapeError, "c"),
    ],
)
def test_a_broken_grad_fn_result_is_a_typed_error(bad, error, where):
    trainer = Trainer()
    rec = Recorder()
    coord = Coordinator(
        3,
        lambda g, mb: bad(g, lsq_terms(trainer.w, mb)),
        trainer.optimizer_step,
        backend=BACKEND,
        callbacks=[rec],
        timeout=WAIT,
    )
    with coord, pytest.raises(error) as info:
        coord.run_step(batches(1, 1, 16)[0][0])
    assert_fully_stopped(coord)
    worker = rec.events[-1][2]
    if where == "w":  # found on a worker: named in a note and in on_error
        assert worker in range(3)
        assert f"worker {worker}" in " ".join(info.value.__notes__)
    else:  # found by the coordinator while reducing: the message names the group
        assert worker is None and "group 4" in str(info.value)
    assert trainer.losses == []


def test_a_stuck_worker_times_out():
    release = threading.Event()
    trainer = Trainer()

    def grad_fn(group: int, mb: tuple):
        if group == 3:
            release.wait(WAIT)
        return lsq_terms(trainer.w, mb)

    coord = Coordinator(
        4,
        grad_fn,
        trainer.optimizer_step,
        backend=BACKEND,
        timeout=0.3,
        join_timeout=0.2,
    )
    coord.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(QueueTimeoutError, match="group 3 of micro-batch 0") as info:
            coord.run_step(batches(1, 1, 16)[0][0])
        assert time.monotonic() - t0 < 3.0
        assert "(worker 3)" in str(info.value)
        assert coord.state is State.STOPPED
    finally:
        release.set()
    deadline = time.monotonic() + WAIT
    while coord.alive_workers() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert_fully_stopped(coord)


def test_no_counted_token_is_an_error():
    trainer = Trainer()
    x, y, mask = batches(1, 1, 16)[0][0]
    with trainer.coordinator(2) as coord, pytest.raises(EmptyInputError):
        coord.run_step((x, y, np.zeros_like(mask)))
    assert coord.state is State.STOPPED and trainer.losses == []


def test_an_optimizer_error_stops_the_run():
    def optimizer_step(grad, loss):
        raise FloatingPointError("bad step")

    rec = Recorder()
    w = np.zeros(P, dtype=np.float32)
    coord = Coordinator(
        2,
        lambda g, mb: lsq_terms(w, mb),
        optimizer_step,
        backend=BACKEND,
        callbacks=[rec],
        timeout=WAIT,
    )
    with coord, pytest.raises(FloatingPointError):
        coord.run_step(batches(1, 1, 16)[0][0])
    assert_fully_stopped(coord)
    assert rec.events[-1][0] == "error" and rec.events[-1][2] is None


def test_an_on_error_callback_that_raises_does_not_hide_the_error():
    class Broken(Callbacks):
        def on_error(self, error, worker):
            raise RuntimeError("callback broke")

    def grad_fn(group, mb):
        raise KeyError("the real one")

    coord = Coordinator(
        2,
        grad_fn,
        lambda grad, loss: None,
        backend=BACKEND,
        callbacks=[Broken()],
        timeout=WAIT,
    )
    with coord, pytest.raises(KeyError, match="the real one") as info:
        coord.run_step(batches(1, 1, 16)[0][0])
    assert "callback broke" in " ".join(info.value.__notes__)
