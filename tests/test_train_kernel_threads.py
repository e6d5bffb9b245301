"""Kernel threads shared out among worker threads (cllm_spec.train.engines).

With ``parallel.workers = N > 1`` each worker's kernel calls get
``max(1, n // N)`` of a backend's n kernel threads, and the count comes back
when the engine stops, whatever stopped it.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import cllm_numpy
import numpy as np
import pytest

from cllm_spec.train.config import load_config
from cllm_spec.train.engines import (
    ThreadSteps,
    all_kernel_threads,
    auto_workers,
    kernel_threads,
    make_step_engine,
)


class Threaded(SimpleNamespace):
    """The numpy backend plus the C backend's thread-count functions."""

    def __init__(self, threads: int) -> None:
        super().__init__(**{k: getattr(cllm_numpy, k) for k in cllm_numpy.__all__})
        self.threads = threads
        self.history = [threads]

    def num_threads(self) -> int:
        return self.threads

    def set_num_threads(self, n: int) -> None:
        self.threads = n
        self.history.append(n)


@pytest.mark.parametrize(
    ("threads", "workers", "inside"),
    [(2, 2, 1), (8, 2, 4), (8, 3, 2), (2, 12, 1), (4, 1, 4)],
)
def test_each_worker_gets_its_share_and_the_count_comes_back(threads, workers, inside):
    backend = Threaded(threads)
    with kernel_threads(backend, workers):
        assert backend.num_threads() == inside
    assert backend.num_threads() == threads


def test_the_count_comes_back_after_an_error():
    backend = Threaded(4)
    with pytest.raises(KeyboardInterrupt), kernel_threads(backend, 2):
        assert backend.num_threads() == 2
        raise KeyboardInterrupt
    assert backend.num_threads() == 4


def test_a_backend_without_thread_counts_is_left_alone():
    with kernel_threads(cllm_numpy, 4):  # neither function: nothing to call
        assert not hasattr(cllm_numpy, "set_num_threads")
    half = SimpleNamespace(num_threads=lambda: 4)  # a count it cannot change
    with kernel_threads(half, 2):
        assert half.num_threads() == 4


def test_all_kernel_threads_for_the_block_then_back():
    backend = Threaded(2)
    with kernel_threads(backend, 2), all_kernel_threads(backend, 2):
        assert backend.num_threads() == 2
    assert backend.history == [2, 1, 2, 1, 2]
    with pytest.raises(KeyboardInterrupt), all_kernel_threads(backend, 8):
        assert backend.num_threads() == 8
        raise KeyboardInterrupt
    assert backend.num_threads() == 2
    with all_kernel_threads(backend, 2):  # already there: nothing to change
        pass
    with all_kernel_threads(cllm_numpy, 4):  # a backend without counts
        pass
    assert backend.history == [2, 1, 2, 1, 2, 8, 2]


def test_the_step_tail_gets_every_kernel_thread_back():
    """Two workers share two kernel threads (one each) while they compute; the
    coordinator's reduction and optimizer step, with both idle, get both."""
    backend = Threaded(2)
    seen: dict[str, set[int]] = {"grad_fn": set(), "optimizer": set()}

    class Target:  # a trainer without grad_many: the engine calls grad_fn
        params = np.zeros(3, np.float32)

        def grad_fn(self, group: int, batch: Any) -> Any:
            seen["grad_fn"].add(backend.num_threads())
            n = int(batch.size)
            return np.zeros(3, np.float32), float(n), n

        def optimizer_step(self, grad: np.ndarray, loss: float) -> Any:
            seen["optimizer"].add(backend.num_threads())
            return None

    engine = ThreadSteps(backend, 2, timeout=30.0)
    engine.bind(Target())
    with engine:
        engine.step([np.ones((24, 2), np.float32)])
        engine.step([np.ones((24, 2), np.float32)])
    assert seen == {"grad_fn": {1}, "optimizer": {2}}
    assert backend.num_threads() == 2


def test_thread_engine_shares_while_open(monkeypatch):
    backend = Threaded(2)
    engine = ThreadSteps(backend, 2, timeout=30.0)
    with engine:
        assert backend.num_threads() == 1
    assert backend.history == [2, 1, 2]
    # a coordinator that fails to start gives the count back too
    failing = ThreadSteps(backend, 2, timeout=30.0)

    def refuse(*_: Any) -> None:
        raise RuntimeError("no threads")

    monkeypatch.setattr(failing._coord, "start", refuse)
    with pytest.raises(RuntimeError), failing:
        pass
    assert backend.num_threads() == 2


@pytest.mark.parametrize(("threads", "workers"), [(1, 1), (2, 2), (5, 5), (40, 12)])
def test_auto_workers_follow_the_backends_kernel_threads(threads, workers):
    assert auto_workers(Threaded(threads)) == workers


def test_auto_workers_of_a_backend_without_threads_count_the_usable_cpus(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda _: {0, 1, 2})
    assert auto_workers(cllm_numpy) == 3
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(64)))
    assert auto_workers(cllm_numpy) == 12


def test_the_default_config_runs_one_worker_per_kernel_thread():
    cfg = load_config(None, [])
    assert cfg.parallel.workers == 0  # the default: decided by the machine
    assert make_step_engine(cfg, Threaded(2)).n_workers == 2
    explicit = load_config(None, ["parallel.workers=3"])
    assert make_step_engine(explicit, Threaded(2)).n_workers == 3
    # the mpi engine runs one worker per rank: 0 (the default) and 1 are fine
    assert load_config(None, ["parallel.engine=mpi"]).parallel.workers == 0
