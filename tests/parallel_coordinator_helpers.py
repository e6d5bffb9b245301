"""A synthetic model and a trainer for the coordinator's test modules.

The model is the MPI tests' least-squares problem (``tests/mpi_programs/lsq.py``),
not the GPT model: per token ``loss = 0.5 * (x . w - y)^2``, so the gradient of
the summed loss of a group is ``sum_tokens (x . w - y) x``. Rows are scaled by
factors between 1e-2 and 1e2, so float32 sums of the group gradients depend on
the order of the additions (checked in ``test_the_data_is_order_sensitive`` of
``test_parallel_coordinator.py``): a coordinator that added the groups in the
order the workers finished would change bits between runs and worker counts.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from cllm_spec.parallel import N_GROUPS, Callbacks, Coordinator, State
from cllm_spec.registry import get_backend
from tests.mpi_programs.lsq import LR, P, lsq_terms, make_batch

BACKEND = get_backend("numpy")
WAIT = 10.0  # seconds: upper bound for any wait in these tests


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
