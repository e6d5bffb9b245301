"""Step engines: who computes the groups of a step (``parallel.engine``).

``parallel.engine`` computes the groups of every step
(:mod:`cllm_spec.train.step`): ``threads`` hands them to ``parallel.workers``
worker threads (:class:`cllm_spec.parallel.Coordinator`), ``mpi`` to the ranks
of an ``mpiexec`` job (:class:`cllm_spec.parallel.MPIEngine`). The cut and the
order of every addition depend on ``B`` and ``k`` alone, never on the number of
workers or ranks, so ``parallel.workers = 1, 2, 3, 12`` and ``mpiexec -n K``
give the same bits on a deterministic backend. The group split is used with one
worker too, so that one worker runs the same math as N: a run's losses and
checkpoints do not depend on how it was parallelised.

Parallel runs
=============
``parallel.workers = N`` (engine ``threads``; the default 0 picks one worker
per core, :func:`auto_workers`): the trainer's thread is the
coordinator; it never computes a gradient, it hands out the groups, reduces
their gradients and takes the optimizer step. A worker that raises ends the run
with that worker's exception (a note names the worker, group, micro-batch and
step); a worker that hangs ends it after ``parallel.timeout`` seconds with a
QueueTimeoutError naming it. With N > 1 the end of the run prints a per-worker
table (group micro-batches, tokens, busy and idle shares of the time).

``mpiexec -n K cllm train --set parallel.engine=mpi ...``: every rank reads the
config, the corpus and (on resume) the checkpoint, and holds the whole model;
rank 0 checks ``out_dir``, trains the tokenizer and writes the run files, and
hands the tokenizer to the others. Each rank computes its share of the 12
groups of every batch; the group results are exchanged and reduced the same
way on every rank, and every rank takes the same optimizer step. Right after
starting (or resuming) the ranks compare a SHA-256 of the weights and the
optimizer state, then of the weights every ``parallel.check_every`` steps
(:func:`cllm_spec.parallel.weights_digest`). Only rank 0 prints, evaluates,
samples, writes ``metrics.jsonl`` and checkpoints; the others are silent. A
rank that raises aborts the job (``cllm mpi: rank r of K failed ...`` and the
traceback on stderr; mpiexec exits non-zero), one that dies is ended by
mpiexec, one that hangs by the others after ``parallel.timeout`` seconds.

An ``mpiexec`` launch without ``parallel.engine=mpi`` is refused on every
process (:func:`make_step_engine`): each would train alone, into one run
directory.

Either way, ``metrics.jsonl`` ends with one ``parallel`` row
(:mod:`cllm_spec.train.runlog`).

Kernel threads
==============
A backend whose kernels run on threads of their own and says how many
(``num_threads()`` and ``set_num_threads(n)``, as the C backend does) gets
``max(1, n // N)`` of them per call while ``parallel.workers = N > 1`` worker
threads compute groups, and its count back when the engine stops: N workers
already keep N cores busy, and on 2 cores, 2 workers each asking for 2 kernel
threads ran 17% slower than with 1 each (the default model, 2 workers:
43,100 against 51,800 tokens/s). Results never depend on the count. The
evaluations and samples between steps run with the reduced count too. The
coordinator's tail of each step (the last reduction, clip, optimizer step),
during which no worker computes, gets the whole count back
(:func:`all_kernel_threads`).

BLAS threads
============
``train.blas_threads`` (default 1; 0 leaves BLAS alone) caps the
BLAS library's threads (threadpoolctl) for the whole run. At this model size a
matrix product is too small for two BLAS threads to pay off, and on a busy
machine they wait for each other and make steps several times slower; with
one BLAS thread each, two worker threads keep two cores busy, because the
numpy kernels release the GIL inside BLAS.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, Protocol

import numpy as np

from cllm_spec.errors import ConfigError
from cllm_spec.parallel import (
    Coordinator,
    MPIEngine,
    StepResult,
    WorkerStats,
)
from cllm_spec.protocols import Batch
from cllm_spec.train.config import RunConfig


class StepTarget(Protocol):
    """What an engine steps: a :class:`cllm_spec.train.loop.Trainer`."""

    params: np.ndarray

    def grad_fn(self, group: int, batch: Batch) -> tuple[np.ndarray, float, int]:
        """One group's ``(n * gradient, n * loss, n)`` (any thread)."""
        ...

    def optimizer_step(self, grad: np.ndarray, loss: float) -> float:
        """Clip and update with the step's mean gradient; the pre-clip norm."""
        ...


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """At most ``n`` BLAS threads inside the block (``n = 0``: unchanged).

    Why: see "BLAS threads" in the module docstring.
    """
    if n == 0:
        yield
        return
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    with threadpool_limits(limits=n, user_api="blas"):
        yield


class StepEngine:
    """Computes a Trainer's steps: :class:`ThreadSteps` or :class:`MPISteps`.

    ``bind(trainer)`` names the trainer whose ``grad_fn`` and ``optimizer_step``
    it calls. ``with engine:`` starts it and stops it; blocks nest, and only the
    outermost one starts and stops. The collective methods (``any_rank``,
    ``barrier``, ``share``, ``check_start``, ``worker_stats``) must be called by
    every rank in the same order; with threads they are local.
    """

    name = ""
    is_root = True  # the process that prints, logs and writes checkpoints
    n_workers = 1

    def __init__(self) -> None:
        self._trainer: StepTarget | None = None
        self._depth = 0

    def bind(self, trainer: StepTarget) -> None:
        self._trainer = trainer

    def _target(self) -> StepTarget:
        if self._trainer is None:
            raise ConfigError("the step engine has no trainer: call bind() first")
        return self._trainer

    def grad_fn(self, group: int, batch: Batch) -> tuple[np.ndarray, float, int]:
        return self._target().grad_fn(group, batch)

    def grad_many(
        self, groups: list[int], batches: list[Batch]
    ) -> list[tuple[np.ndarray, float, int]]:
        """The target's ``grad_many(groups, batches)`` (the results of its
        ``grad_fn`` for each group, same bits, in one call) or, for a target
        without one, its ``grad_fn`` per group."""
        target = self._target()
        many = getattr(target, "grad_many", None)
        if many is None:
            return [target.grad_fn(g, b) for g, b in zip(groups, batches, strict=True)]
        return list(many(groups, batches))

    def optimizer_step(self, grad: np.ndarray, loss: float) -> float:
        return self._target().optimizer_step(grad, loss)

    def __enter__(self) -> StepEngine:
        if self._depth == 0:
            self._open()
        self._depth += 1
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._close(exc_type, exc, tb)

    def _open(self) -> None:
        raise NotImplementedError

    def _close(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        raise NotImplementedError

    def step(self, batches: list[Batch]) -> StepResult:
        """One optimizer step over the micro-batches ``batches``."""
        raise NotImplementedError

    def reset_stats(self) -> None:
        raise NotImplementedError

    def worker_stats(self) -> list[WorkerStats]:
        """Per worker (rank) statistics since ``reset_stats``, on every rank."""
        raise NotImplementedError

    def any_rank(self, flag: bool) -> bool:
        return flag

    def barrier(self) -> None:
        """Every rank got here (after rank 0 saved a checkpoint)."""

    def share(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        return obj

    def check_start(self, state: dict[str, np.ndarray]) -> None:
        """Every rank starts from the same ``state``."""

    def settle(self, failure: BaseException | None) -> None:
        """Raise ``failure``, rank 0's error in preparing the run, on every rank.

        Collective. The engine then stops cleanly (no abort), so every rank
        leaves with the same error and exit status, while the others would
        otherwise wait for rank 0 until ``parallel.timeout``.
        """
        if failure is not None:
            raise failure

    def describe(self) -> str:
        raise NotImplementedError


@contextlib.contextmanager
def kernel_threads(backend: Any, workers: int) -> Iterator[None]:
    """The backend's kernel threads shared out among ``workers`` worker threads
    inside the block (see "Kernel threads" in the module docstring)."""
    count = getattr(backend, "num_threads", None)
    change = getattr(backend, "set_num_threads", None)
    if workers <= 1 or count is None or change is None:
        yield
        return
    before = int(count())
    change(max(1, before // workers))
    try:
        yield
    finally:
        change(before)


@contextlib.contextmanager
def all_kernel_threads(backend: Any, total: int) -> Iterator[None]:
    """The backend's kernel threads at ``total`` inside the block, then back
    to what they were: for work that runs while the worker threads among
    which :func:`kernel_threads` shared them out are idle."""
    count = getattr(backend, "num_threads", None)
    change = getattr(backend, "set_num_threads", None)
    if count is None or change is None or int(count()) == total:
        yield
        return
    before = int(count())
    change(total)
    try:
        yield
    finally:
        change(before)


class ThreadSteps(StepEngine):
    """``parallel.engine = threads``: a Coordinator of ``workers`` threads."""

    name = "threads"

    def __init__(self, backend: Any, workers: int, timeout: float) -> None:
        super().__init__()
        self.n_workers = workers
        self._backend = backend
        self._threads = contextlib.ExitStack()
        self._all_threads: int | None = None  # the backend's count, set by _open
        self._coord = Coordinator(
            workers,
            self.grad_fn,
            self.optimizer_step,
            backend=backend,
            timeout=timeout,
            serial=self._serial,
            grad_many=self.grad_many,
        )

    def _serial(self) -> contextlib.AbstractContextManager[None]:
        """The step's tail, with every worker idle: all kernel threads."""
        if self._all_threads is None:
            return contextlib.nullcontext()
        return all_kernel_threads(self._backend, self._all_threads)

    def _open(self) -> None:
        count = getattr(self._backend, "num_threads", None)
        if count is not None:  # the count kernel_threads shares out
            self._all_threads = int(count())
        self._threads.enter_context(kernel_threads(self._backend, self.n_workers))
        try:
            self._coord.start()
        except BaseException:
            self._threads.close()
            raise

    def _close(self, *exc: object) -> None:
        try:
            self._coord.stop()
        finally:
            self._threads.close()

    def step(self, batches: list[Batch]) -> StepResult:
        return self._coord.run_accumulated(list(batches))

    def reset_stats(self) -> None:
        self._coord.reset_stats()

    def worker_stats(self) -> list[WorkerStats]:
        return list(self._coord.stats())

    def describe(self) -> str:
        return (
            f"{self.n_workers} worker thread{'s' * (self.n_workers > 1)} "
            "(threads engine)"
        )


class MPISteps(StepEngine):
    """``parallel.engine = mpi``: this process is one rank of an mpiexec job."""

    name = "mpi"

    def __init__(self, backend: Any, check_every: int, timeout: float) -> None:
        super().__init__()
        self._engine = MPIEngine(
            self.grad_fn,
            self.optimizer_step,
            backend=backend,
            state_fn=self._weights,
            check_every=check_every,
            timeout=timeout,
            grad_many=self.grad_many,
        )
        self._check_every = check_every
        self.rank = self._engine.rank
        self.is_root = self._engine.is_root
        self.n_workers = self._engine.size
        self._stats = WorkerStats()
        self._busy = 0.0
        self._settled: BaseException | None = None

    def _weights(self) -> np.ndarray:
        return self._target().params

    def grad_fn(self, group: int, batch: Batch) -> tuple[np.ndarray, float, int]:
        started = time.monotonic()
        out = super().grad_fn(group, batch)
        self._busy += time.monotonic() - started
        self._stats = self._stats.record(batches=1, tokens=out[2])
        return out

    def grad_many(
        self, groups: list[int], batches: list[Batch]
    ) -> list[tuple[np.ndarray, float, int]]:
        started = time.monotonic()
        out = super().grad_many(groups, batches)
        self._busy += time.monotonic() - started
        tokens = sum(int(o[2]) for o in out)
        self._stats = self._stats.record(batches=len(out), tokens=tokens)
        return out

    def _open(self) -> None:
        self._engine.start()

    def _close(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and exc is self._settled:
            self._engine.stop()  # every rank raised it: nobody waits for us
            return
        # Any other exception aborts the whole job: the others would wait for us.
        self._engine.__exit__(exc_type, exc, tb)

    def step(self, batches: list[Batch]) -> StepResult:
        self._busy = 0.0
        result = self._engine.run_accumulated(list(batches))
        # Everything but this rank's own forward/backward was waiting for work
        # or for the other ranks (the exchange, the reduction, the update).
        idle = max(result.seconds - self._busy, 0.0)
        self._stats = self._stats.record(busy_s=self._busy, idle_s=idle)
        return result

    def reset_stats(self) -> None:
        self._stats = WorkerStats()

    def worker_stats(self) -> list[WorkerStats]:
        return [
            self._engine.broadcast_object(self._stats, root=r)
            for r in range(self.n_workers)
        ]

    def any_rank(self, flag: bool) -> bool:
        return self._engine.any_rank(flag)

    def barrier(self) -> None:
        self._engine.barrier()

    def share(self, obj: Any) -> Any:
        return self._engine.broadcast_object(obj, root=0)

    def check_start(self, state: dict[str, np.ndarray]) -> None:
        self._engine.check_replicas(state)

    def settle(self, failure: BaseException | None) -> None:
        told = self.share(
            None if failure is None else f"{type(failure).__name__}: {failure}"
        )
        if told is None:
            return
        error = failure or ConfigError(
            f"MPI rank {self.rank} of {self.n_workers}: rank 0 could not prepare "
            f"the run ({told.splitlines()[0]})",
            hint="rank 0's message, above or below, gives the cause and a hint",
        )
        self._settled = error
        raise error

    def describe(self) -> str:
        every = {0: "at the start", 1: "after every step"}.get(
            self._check_every, f"every {self._check_every} steps"
        )
        return (
            f"{self.n_workers} MPI rank{'s' * (self.n_workers > 1)} (rank 0 logs and "
            f"checkpoints; weights compared {every})"
        )


#: what MPI launchers set in every process they start: the job's size
#: (MPICH and Intel MPI: PMI_SIZE, MPI_LOCALNRANKS; Open MPI: OMPI_COMM_WORLD_SIZE)
LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")


def launched_ranks(environ: Mapping[str, str] | None = None) -> int:
    """How many processes the MPI launcher that started this one started
    (1 when none did)."""
    env = os.environ if environ is None else environ
    sizes = [env.get(name, "").strip() for name in LAUNCHER_SIZE_VARS]
    return max([int(v) for v in sizes if v.isdigit()] or [1])


def make_step_engine(cfg: RunConfig, backend: Any) -> StepEngine:
    """The engine ``parallel.engine`` names, set up from ``[parallel]``.

    ``mpiexec -n K cllm train`` with the threads engine would start K
    independent runs writing one run directory: refused, with the fix.
    """
    par = cfg.parallel
    if par.engine == "mpi":
        return MPISteps(backend, par.check_every, par.timeout)
    ranks = launched_ranks()
    if ranks > 1:
        raise ConfigError(
            f"parallel.engine: this is one of {ranks} processes started by mpiexec, "
            f"but parallel.engine is {par.engine!r}: each would train alone and "
            "write the same run directory",
            hint=f"add --set parallel.engine=mpi (mpiexec -n {ranks} cllm train "
            "--set parallel.engine=mpi ...), or start cllm train without mpiexec",
        )
    return ThreadSteps(backend, par.workers or auto_workers(backend), par.timeout)


def auto_workers(backend: Any) -> int:
    """``parallel.workers = 0``: one worker per kernel thread of ``backend``
    (``num_threads()``, the C backend's ``CLLM_NUM_THREADS``) or, for a backend
    that does not say, per CPU this process may use; at most 12 (the groups of
    a step) and at least 1."""
    count = getattr(backend, "num_threads", None)
    if count is not None:
        n = int(count())
    elif hasattr(os, "sched_getaffinity"):
        n = len(os.sched_getaffinity(0))
    else:  # pragma: no cover - platforms without affinity masks
        n = os.cpu_count() or 1
    return max(1, min(12, n))


__all__ = [
    "MPISteps",
    "StepEngine",
    "StepTarget",
    "ThreadSteps",
    "all_kernel_threads",
    "auto_workers",
    "blas_threads",
    "kernel_threads",
    "launched_ranks",
    "make_step_engine",
]
