"""The coordinator's lifecycle and callbacks: start, pause, resume and stop,
one step at a time, epochs, and the order and thread of the callbacks.
"""

from __future__ import annotations

import threading
import time

import pytest

from cllm_spec.parallel import N_GROUPS, Callbacks, Coordinator, LifecycleError, State
from tests.parallel_coordinator_helpers import (
    BACKEND,
    WAIT,
    Recorder,
    Trainer,
    assert_fully_stopped,
    batches,
    lsq_terms,
)


# ============================================================ lifecycle ====
def test_lifecycle_through_the_coordinator():
    trainer = Trainer()
    coord = trainer.coordinator(2)
    mb = batches(1, 1, 16)[0][0]
    assert coord.state is State.INITIALIZING
    for action in (lambda: coord.run_step(mb), coord.pause, coord.resume):
        with pytest.raises(LifecycleError):
            action()
    coord.start()
    with pytest.raises(LifecycleError):
        coord.start()
    with pytest.raises(LifecycleError):
        coord.resume()
    coord.pause()
    with pytest.raises(LifecycleError):
        coord.pause()
    coord.resume()
    coord.run_step(mb)
    assert coord.stop() is True and coord.stop() is True
    assert coord.history == (
        State.INITIALIZING,
        State.RUNNING,
        State.PAUSED,
        State.RUNNING,
        State.STOPPING,
        State.STOPPED,
    )
    assert_fully_stopped(coord)
    for action in (lambda: coord.run_step(mb), coord.pause, coord.start):
        with pytest.raises(LifecycleError):
            action()


def test_stop_before_start_never_starts_threads():
    coord = Trainer().coordinator(3)
    assert coord.stop() is True
    assert coord.history == (State.INITIALIZING, State.STOPPING, State.STOPPED)


def run_in_thread(fn) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def body():
        try:
            box["result"] = fn()
        except BaseException as exc:  # checked by the test
            box["error"] = exc

    t = threading.Thread(target=body)
    t.start()
    return t, box


def test_pause_blocks_the_next_step_until_resume():
    trainer = Trainer()
    mb = batches(1, 1, 16)[0][0]
    with trainer.coordinator(3) as coord:
        coord.pause()
        t, box = run_in_thread(lambda: coord.run_step(mb))
        time.sleep(0.15)
        assert t.is_alive() and trainer.calls == []  # waiting, nothing computed
        coord.resume()
        t.join(WAIT)
        assert not t.is_alive() and box["result"].step == 0
        assert len(trainer.calls) == N_GROUPS


def test_stop_while_paused_releases_the_waiting_step():
    trainer = Trainer()
    mb = batches(1, 1, 16)[0][0]
    coord = trainer.coordinator(2)
    coord.start()
    coord.pause()
    t, box = run_in_thread(lambda: coord.run_step(mb))
    time.sleep(0.05)
    assert coord.stop() is True
    t.join(WAIT)
    assert not t.is_alive() and isinstance(box["error"], LifecycleError)
    assert trainer.calls == []
    assert_fully_stopped(coord)


def test_only_one_step_at_a_time():
    release = threading.Event()
    trainer = Trainer()

    def grad_fn(group, mb):
        release.wait(WAIT)
        return lsq_terms(trainer.w, mb)

    mb = batches(1, 1, 16)[0][0]
    coord = Coordinator(
        2, grad_fn, trainer.optimizer_step, backend=BACKEND, timeout=WAIT
    )
    with coord:
        t, box = run_in_thread(lambda: coord.run_step(mb))
        time.sleep(0.05)
        with pytest.raises(LifecycleError, match="another step"):
            coord.run_step(mb)
        release.set()
        t.join(WAIT)
        assert box["result"].step == 0


# ============================================================ callbacks ====
def test_callbacks_fire_in_order_on_the_coordinator_thread():
    trainer = Trainer()
    rec = Recorder()
    data = batches(1, 2, 16)

    class CheckpointAtEnd(Callbacks):  # checkpoint from inside a step's callback
        def on_step_end(self, step, result):
            if step == 1:
                coord.checkpoint(lambda: "inner")

    coord = trainer.coordinator(3, callbacks=[rec, CheckpointAtEnd()])
    with coord:
        coord.start_epoch(4)
        with pytest.raises(LifecycleError):
            coord.start_epoch(5)  # epoch 4 is still open
        coord.run_step(data[0][0])
        coord.run_step(data[1][0])
        assert coord.checkpoint(lambda: "ckpt-2") == "ckpt-2"
        coord.end_epoch()
        with pytest.raises(LifecycleError):
            coord.end_epoch()
    assert rec.events == [
        ("epoch_start", 4),
        ("step_start", 0),
        ("step_end", 0, 0),
        ("step_start", 1),
        ("step_end", 1, 1),
        ("checkpoint", 2, "inner"),  # in step 1's on_step_end: 2 steps are done
        ("checkpoint", 2, "ckpt-2"),
        ("epoch_end", 4),
    ]
    assert rec.threads == {threading.get_ident()}


def test_steps_keep_working_across_epochs():
    # The original's workers left their loop at the end of epoch 1, so epoch 2
    # waited forever; here workers live as long as the coordinator.
    trainer = Trainer()
    data = batches(2, 4, 16)
    with trainer.coordinator(3) as coord:
        for epoch in range(2):
            coord.start_epoch(epoch)
            for step in data[2 * epoch : 2 * epoch + 2]:
                coord.run_step(step[0])
            coord.end_epoch()
        assert coord.steps == 4 and coord.epoch is None
    assert len(trainer.losses) == 4 and len(trainer.calls) == 4 * N_GROUPS


def test_a_raising_step_start_callback_leaves_the_run_usable():
    class Once(Callbacks):
        fired = False

        def on_step_start(self, step):
            if not self.fired:
                self.fired = True
                raise RuntimeError("not yet")

    trainer = Trainer()
    mb = batches(1, 1, 16)[0][0]
    with trainer.coordinator(2, callbacks=[Once()]) as coord:
        with pytest.raises(RuntimeError, match="not yet"):
            coord.run_step(mb)
        assert coord.state is State.RUNNING and trainer.calls == []
        assert coord.run_step(mb).step == 0
