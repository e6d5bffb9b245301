"""The coordinator's options: ``grad_many`` (a worker's groups in one call),
``serial`` (the context the step's tail runs in) and the checks of the
constructor's arguments.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from cllm_spec.errors import ConfigError, DTypeError, EmptyInputError, ShapeError
from cllm_spec.parallel import N_GROUPS, Coordinator, State, split_rows
from tests.parallel_coordinator_helpers import (
    BACKEND,
    WAIT,
    Trainer,
    assert_same_bits,
    batches,
    reference,
)


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
