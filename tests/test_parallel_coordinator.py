"""The coordinator: N workers give the bits of one, failures end the run promptly,
lifecycle, statistics and callbacks.

The model is a synthetic least-squares problem in float32 written here, not the
GPT model: per token ``loss = 0.5 * (x . w - y)^2``, so the gradient of the
summed loss of a group is ``sum_tokens (x . w - y) x``. Rows are scaled by
factors between 1e-2 and 1e2, so float32 sums of the group gradients depend on
the order of the additions (checked in ``test_the_data_is_order_sensitive``):
a coordinator that added the groups in the order the workers finished would
change bits between runs and worker counts.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import pytest

from cllm_spec.errors import (
    ConfigError,
    DTypeError,
    EmptyInputError,
    QueueTimeoutError,
    ShapeError,
)
from cllm_spec.parallel import (
    N_GROUPS,
    Callbacks,
    Coordinator,
    LifecycleError,
    State,
    WorkerStats,
    split_rows,
)
from cllm_spec.registry import get_backend
from cllm_spec.tolerances import tolerance

BACKEND = get_backend("numpy")
P = 33  # parameters
K = 4  # tokens per row
LR = 1e-5
WAIT = 10.0  # seconds: upper bound for any wait in these tests


# ============================================================== harness ====
def make_batch(rng: np.random.Generator, rows: int, dtype: Any = np.float32) -> tuple:
    scale = 10.0 ** rng.uniform(-2.0, 2.0, size=(rows, 1, 1))
    x = (rng.standard_normal((rows, K, P)) * scale).astype(dtype)  # (B, K, P)
    y = rng.standard_normal((rows, K)).astype(dtype)  # (B, K)
    mask = rng.random((rows, K)) < 0.7  # (B, K): unequal token counts per group
    return x, y, mask


def lsq_terms(w: np.ndarray, mb: tuple) -> tuple[np.ndarray, float, int]:
    """Gradient of the summed loss, the summed loss and the token count."""
    x, y, mask = mb
    r = ((x * w).sum(axis=-1) - y) * mask  # (B, K) residuals, 0 where masked
    grads = (r[..., None] * x).sum(axis=(0, 1))  # (P,)
    loss_sum = 0.5 * float(np.sum(r.astype(np.float64) ** 2))
    return grads, loss_sum, int(mask.sum())


@dataclass
class Trainer:
    """Plain SGD on the least-squares model, driven by a Coordinator."""

    dtype: Any = np.float32
    delay: bool = False  # vary finishing order: groups sleep 0, 1 or 2 ms
    w: np.ndarray = field(init=False)
    losses: list[float] = field(default_factory=list)
    grads: list[bytes] = field(default_factory=list)
    opt_threads: set[int] = field(default_factory=set)
    calls: list[tuple[int, str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.w = np.zeros(P, dtype=self.dtype)

    def grad_fn(self, group: int, mb: tuple) -> tuple[np.ndarray, float, int]:
        if self.delay:
            time.sleep(0.001 * ((N_GROUPS - 1 - group) % 3))
        out = lsq_terms(self.w, mb)
        with self.lock:
            self.calls.append((group, threading.current_thread().name, out[2]))
        return out

    def optimizer_step(self, grad: np.ndarray, loss: float) -> float:
        self.opt_threads.add(threading.get_ident())
        self.losses.append(loss)
        self.grads.append(grad.tobytes())
        self.w = self.w - self.w.dtype.type(LR) * grad
        return float(np.linalg.norm(grad))

    def coordinator(self, n_workers: int, **kwargs: Any) -> Coordinator:
        kwargs.setdefault("backend", BACKEND)
        kwargs.setdefault("timeout", WAIT)  # a lost result fails, never hangs
        return Coordinator(n_workers, self.grad_fn, self.optimizer_step, **kwargs)


def batches(seed: int, steps: int, rows: int, accum: int = 1, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [[make_batch(rng, rows, dtype) for _ in range(accum)] for _ in range(steps)]


def train(n_workers: int, data: list, *, delay: bool = True, dtype=np.float32):
    trainer = Trainer(dtype=dtype, delay=delay)
    with trainer.coordinator(n_workers) as coord:
        results = [coord.run_accumulated(list(step)) for step in data]
        stats = coord.stats()
    return trainer, results, stats, coord


@cache
def reference(steps: int, rows: int, accum: int) -> Trainer:
    """The 1-worker trajectory every other worker count must reproduce bitwise."""
    trainer, *_ = train(1, batches(7, steps, rows, accum), delay=False)
    return trainer


def assert_same_bits(a: Trainer, b: Trainer) -> None:
    assert a.losses == b.losses  # Python floats: equal means the same bits
    assert len(a.grads) == len(b.grads)
    for step, (ga, gb) in enumerate(zip(a.grads, b.grads, strict=True)):
        assert ga == gb, f"gradient bits differ at step {step}"
    assert a.w.tobytes() == b.w.tobytes()


# ========================================================== determinism ====
def test_the_data_is_order_sensitive():
    # Without this, the bitwise tests below could pass with any summation order.
    mb = batches(7, 1, 16)[0][0]
    parts = split_rows(mb, N_GROUPS)
    w = np.full(P, 0.01, dtype=np.float32)
    group_grads = [lsq_terms(w, p)[0] for p in parts]
    in_order = BACKEND.grad_tree_reduce(group_grads)
    assert in_order.tobytes() != BACKEND.grad_tree_reduce(group_grads[::-1]).tobytes()
    sequential = group_grads[0]
    for g in group_grads[1:]:
        sequential = sequential + g
    assert in_order.tobytes() != sequential.tobytes()


@pytest.mark.parametrize("n_workers", [1, 2, 3, 5, 12, 13, 24])
def test_n_workers_reproduce_one_worker_bitwise(n_workers):
    trainer, results, _, _ = train(n_workers, batches(7, 10, 16))
    ref = reference(10, 16, 1)
    assert len(trainer.losses) == 10  # one optimizer step per global step
    assert_same_bits(trainer, ref)
    assert all(np.isfinite(trainer.losses))
    assert [r.step for r in results] == list(range(10))
    assert [r.loss for r in results] == ref.losses


@pytest.mark.parametrize("n_workers", [2, 3, 12])
def test_accumulation_reproduces_one_worker_bitwise(n_workers):
    trainer, results, _, _ = train(n_workers, batches(7, 4, 16, accum=3))
    assert_same_bits(trainer, reference(4, 16, 3))
    assert all(r.micro_batches == 3 and r.groups == 36 for r in results)


@pytest.mark.parametrize("n_workers", [3, 12])
def test_fewer_rows_than_groups(n_workers):
    # B = 5: groups 5..11 are empty, never computed, and change nothing.
    trainer, results, _, _ = train(n_workers, batches(7, 3, 5))
    assert_same_bits(trainer, reference(3, 5, 1))
    assert sorted({g for g, _, _ in trainer.calls}) == [0, 1, 2, 3, 4]
    assert all(r.groups == 5 for r in results)


@pytest.mark.parametrize(("rows", "accum"), [(16, 1), (13, 3), (30, 2)])
def test_step_equals_the_whole_batch_mean(rows, accum):
    # float64, so the comparison with the direct formula is tight: the loss is
    # the mean over every counted token of the step (not a mean of group means)
    # and the gradient is its gradient.
    data = batches(3, 1, rows, accum, dtype=np.float64)
    trainer, results, _, _ = train(3, data, dtype=np.float64)
    x = np.concatenate([mb[0] for mb in data[0]]).astype(np.float64)
    y = np.concatenate([mb[1] for mb in data[0]]).astype(np.float64)
    mask = np.concatenate([mb[2] for mb in data[0]])
    r = (np.einsum("bkp,p->bk", x, np.zeros(P)) - y) * mask
    n = int(mask.sum())
    want_grad = np.einsum("bk,bkp->p", r, x) / n
    want_loss = 0.5 * np.sum(r**2) / n
    tol = tolerance("parallel", "step", np.float64)
    got_grad = np.frombuffer(trainer.grads[0], dtype=np.float64)
    np.testing.assert_allclose(got_grad, want_grad, rtol=tol.rtol, atol=tol.atol)
    np.testing.assert_allclose(trainer.losses[0], want_loss, rtol=tol.rtol)
    assert results[0].tokens == n


# ============================================================ threads ====
@pytest.mark.parametrize("n_workers", [1, 3, 13])
def test_who_runs_what(n_workers):
    trainer, _, stats, coord = train(n_workers, batches(7, 2, 16))
    # The optimizer only on the caller's (coordinator's) thread ...
    assert trainer.opt_threads == {threading.get_ident()}
    # ... and every group on the worker that owns it, never on the caller.
    prefix = coord.thread_prefix
    for group, thread_name, _ in trainer.calls:
        owner = coord.allocation.group_to_worker[group]
        assert thread_name == f"{prefix}{owner}"
    assert len(trainer.calls) == 2 * N_GROUPS
    for w in coord.allocation.idle_workers:  # workers 12.. never compute
        assert stats[w].batches == 0 and stats[w].tokens == 0
    assert coord.alive_workers() == ()


def test_stats_add_up_and_reset():
    trainer = Trainer()
    data = batches(5, 4, 16)
    with trainer.coordinator(5) as coord:
        results = [coord.run_step(step[0]) for step in data]
        stats = coord.stats()
        total = coord.total_stats()
        assert total == WorkerStats.total(stats)
        assert total.batches == 4 * N_GROUPS
        assert total.tokens == sum(r.tokens for r in results)
        assert total.tokens == sum(n for _, _, n in trainer.calls)
        for w, s in enumerate(stats):
            assert s.batches == 4 * len(coord.allocation.groups_of(w))
            assert s.busy_s > 0 and s.idle_s >= 0
        coord.reset_stats()
        assert coord.stats() == (WorkerStats(),) * 5
        again = coord.run_step(data[0][0])
        assert coord.total_stats().batches == N_GROUPS
        assert coord.total_stats().tokens == again.tokens


# ============================================================= failures ====
class Recorder(Callbacks):
    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.threads: set[int] = set()

    def _log(self, *event: Any) -> None:
        self.events.append(event)
        self.threads.add(threading.get_ident())

    def on_epoch_start(self, epoch: int) -> None:
        self._log("epoch_start", epoch)

    def on_epoch_end(self, epoch: int) -> None:
        self._log("epoch_end", epoch)

    def on_step_start(self, step: int) -> None:
        self._log("step_start", step)

    def on_step_end(self, step: int, result: Any) -> None:
        self._log("step_end", step, result.step)

    def on_checkpoint(self, step: int, info: Any) -> None:
        self._log("checkpoint", step, info)

    def on_error(self, error: BaseException, worker: int | None) -> None:
        self._log("error", error, worker)


def assert_fully_stopped(coord: Coordinator) -> None:
    assert coord.state is State.STOPPED
    assert coord.alive_workers() == ()
    names = [t.name for t in threading.enumerate()]
    assert not [n for n in names if n.startswith(coord.thread_prefix)]


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


# ============================================================ grad_many ====
@pytest.mark.parametrize(("n_workers", "accum"), [(1, 1), (2, 3), (5, 2)])
def test_grad_many_takes_a_workers_groups_of_a_micro_batch_in_one_call(
    n_workers, accum
):
    """One call per (worker, micro-batch) with the worker's groups in order;
    the bits, losses and token counts of grad_fn one group at a time."""
    trainer = Trainer(delay=True)
    calls: list[tuple[str, tuple[int, ...]]] = []

    def grad_many(groups: list[int], mbs: list[tuple]) -> list[Any]:
        with trainer.lock:
            calls.append((threading.current_thread().name, tuple(groups)))
        return [trainer.grad_fn(g, mb) for g, mb in zip(groups, mbs, strict=True)]

    data = batches(7, 3, 16, accum)
    coord = trainer.coordinator(n_workers, grad_many=grad_many)
    with coord:
        for mbs in data:
            coord.run_accumulated(list(mbs))
        total = coord.total_stats()
    assert_same_bits(trainer, reference(3, 16, accum))
    owned = coord.allocation.groups
    want = sorted(
        (f"{coord.thread_prefix}{w}", owned[w])
        for w in range(n_workers)
        for _ in range(3 * accum)
        if owned[w]
    )
    assert sorted(calls) == want
    assert total.batches == 3 * accum * N_GROUPS
    assert total.tokens == sum(n for _, _, n in trainer.calls)


def test_an_error_in_grad_many_names_every_group_of_the_call():
    trainer = Trainer()

    def grad_many(groups: list[int], mbs: list[tuple]) -> list[Any]:
        if 5 in groups:
            raise ValueError("boom in a call")
        return [trainer.grad_fn(g, mb) for g, mb in zip(groups, mbs, strict=True)]

    coord = trainer.coordinator(2, grad_many=grad_many)
    with coord:
        with pytest.raises(ValueError, match="boom in a call") as info:
            coord.run_step(batches(1, 1, 16)[0][0])
    note = " ".join(getattr(info.value, "__notes__", []))
    owner = coord.allocation.group_to_worker[5]
    mine = ", ".join(map(str, coord.allocation.groups[owner]))
    assert f"worker {owner}" in note and f"groups {mine} (computed in one" in note
    assert trainer.losses == []


def test_grad_many_with_a_result_missing_is_a_shape_error():
    trainer = Trainer()

    def grad_many(groups: list[int], mbs: list[tuple]) -> list[Any]:
        return [trainer.grad_fn(g, mb) for g, mb in zip(groups, mbs, strict=True)][1:]

    coord = trainer.coordinator(3, grad_many=grad_many)
    with coord:
        with pytest.raises(ShapeError, match="grad_many: 3 results for 4 groups"):
            coord.run_step(batches(1, 1, 16)[0][0])


# ========================================================= serial tail ====
@pytest.mark.parametrize("accum", [1, 3])
def test_the_step_tail_runs_inside_serial_with_every_worker_idle(accum):
    """``serial()`` is entered once per step, after the last group returned,
    and holds the optimizer step; the bits are those of no ``serial``."""
    trainer = Trainer(delay=True)
    events: list[str] = []
    running = [0]  # grad_fn calls in progress
    inner = trainer.grad_fn

    def grad_fn(group: int, mb: tuple) -> tuple[np.ndarray, float, int]:
        with trainer.lock:
            running[0] += 1
        try:
            return inner(group, mb)
        finally:
            with trainer.lock:
                running[0] -= 1
                events.append("group")

    class Serial:
        def __enter__(self) -> None:
            with trainer.lock:
                assert running[0] == 0, "a worker computes inside serial()"
                events.append("enter")

        def __exit__(self, *exc: object) -> None:
            events.append("exit")

    step = trainer.optimizer_step

    def optimizer_step(grad: np.ndarray, loss: float) -> float:
        events.append("optimizer")
        return step(grad, loss)

    data = batches(7, 3, 16, accum)
    with Coordinator(
        3, grad_fn, optimizer_step, backend=BACKEND, timeout=WAIT, serial=Serial
    ) as coord:
        for mbs in data:
            coord.run_accumulated(list(mbs))
    per_step = ["group"] * (N_GROUPS * accum) + ["enter", "optimizer", "exit"]
    assert events == per_step * len(data)
    assert_same_bits(trainer, reference(3, 16, accum))


def test_an_error_inside_serial_stops_the_run():
    trainer = Trainer()

    class Broken:
        def __enter__(self) -> None:
            raise RuntimeError("no threads for the tail")

        def __exit__(self, *exc: object) -> None:
            pass

    coord = trainer.coordinator(2, serial=Broken)
    with coord:
        with pytest.raises(RuntimeError, match="no threads for the tail"):
            coord.run_step(batches(1, 1, 16)[0][0])
        assert coord.state is State.STOPPED
    assert trainer.losses == []  # no optimizer step was taken


# ============================================================ arguments ====
def test_bad_arguments():
    trainer = Trainer()
    ok = (trainer.grad_fn, trainer.optimizer_step)
    with pytest.raises(ConfigError):
        Coordinator(0, *ok, backend=BACKEND)
    with pytest.raises(ConfigError):
        Coordinator(2, None, trainer.optimizer_step, backend=BACKEND)
    with pytest.raises(ConfigError, match="serial"):
        Coordinator(2, *ok, backend=BACKEND, serial=None)
    with pytest.raises(ConfigError, match="grad_many"):
        Coordinator(2, *ok, backend=BACKEND, grad_many=42)
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ConfigError):
            Coordinator(2, *ok, backend=BACKEND, timeout=bad)
    with pytest.raises(ConfigError, match="lacks"):
        Coordinator(2, *ok, backend=object())
    mb = batches(1, 1, 16)[0][0]
    coord = Coordinator(
        2, *ok, backend=BACKEND, split_fn=lambda b, k: split_rows(b, k)[:11]
    )
    with coord:
        with pytest.raises(DTypeError):
            coord.run_accumulated(mb)  # a tuple is one batch, not a list of them
        with pytest.raises(EmptyInputError):
            coord.run_accumulated([])
        with pytest.raises(ShapeError, match="12 group micro-batches"):
            coord.run_step(mb)
        assert coord.state is State.RUNNING and trainer.calls == []
