"""Data-parallel training over MPI ranks, with the bits of one process.

::

    engine = MPIEngine(grad_fn, optimizer_step, backend=backend, state_fn=params)
    with engine:                                  # start() ... stop()
        if engine.is_root:
            log("...")                            # rank 0 logs and checkpoints
        result = engine.run_step(batch)           # one optimizer step
        result = engine.run_accumulated([b0, b1]) # one step over 2 micro-batches

Run under ``mpiexec -n K python train.py`` (or ``mpiexec -n K cllm train ...``);
started without mpiexec the process is a singleton world of one rank. Needs the
``mpi`` extra (``pip install 'cllm[mpi]'``: mpi4py and the ``mpich`` wheel, which
brings ``mpiexec`` and ``libmpi``; no system MPI is needed). This module imports
without mpi4py; only :class:`MPIEngine` needs it, and says so
(:class:`~cllm_spec.errors.Unsupported`) when it is missing.

The idea
--------
Every rank holds the whole model, the whole optimizer state and the whole
global batch (each rank reads the same data in the same order, e.g. the same
seeded loader). A step is the thread coordinator's step
(:mod:`cllm_spec.parallel.coordinator`) with ranks in place of worker threads:

1. Every rank cuts each micro-batch into the same 12 group micro-batches
   (``split_fn``, default :func:`~cllm_spec.parallel.split.split_rows`; the cut
   depends on the batch only, never on the number of ranks ``K``).
2. Rank ``r`` computes ``grad_fn(g, part)`` for its own groups only:
   ``allocate_groups(K).groups[r]``, the same rule as for ``K`` workers
   (:mod:`cllm_spec.parallel.allocation`), so ranks ``>= 12`` compute nothing.
3. The ranks exchange their group results (grads, loss sum, token count) with
   an all-to-all of point-to-point messages: afterwards EVERY rank holds all
   the group results of the step, bit for bit as computed. (Messages are
   pickled: the ranks of one job trust each other.)
4. EVERY rank runs the same reduction over all the groups, in group order
   (:func:`~cllm_spec.parallel.reduction.reduce_groups` per micro-batch, then
   :func:`~cllm_spec.parallel.reduction.finish_step`), exactly the calls and
   the order of the thread coordinator. Nothing in it names a rank, so every
   rank gets the same bits, and they equal those of one process running the
   coordinator (any number of workers) on the same global batches.
5. EVERY rank calls ``optimizer_step(grad, loss)`` with those bits, so the
   weights and optimizer states stay identical without ever being sent.
6. Every ``check_every`` steps the ranks compare :func:`weights_digest` of
   ``state_fn()`` (SHA-256 of the weights, and whatever else it returns, such as
   the optimizer moments); a difference is a :class:`ReplicaMismatchError`
   naming which ranks hold which digest. It catches a non-deterministic
   optimizer, a rank that loaded another checkpoint, or memory corruption.

Each exchange also carries the step number and, with ``verify_batches``
(default), a SHA-256 of the rank's 12-way cut of its batches: ranks that read
different data would otherwise train silently on a mixture while keeping equal
weights (the digest check cannot see it). A difference is a
:class:`ReplicaMismatchError` too. So is a rank that entered another engine call
than the others (every exchange carries the call's name and sequence number).

``grad_fn`` and ``optimizer_step`` have the thread coordinator's contract
(:mod:`cllm_spec.parallel.reduction`); :class:`~cllm_spec.parallel.StepResult` is
the coordinator's type (``groups`` counts the group micro-batches of all ranks),
so a trainer can drive either engine.

API (for the trainer)
---------------------
``MPIEngine(grad_fn, optimizer_step, *, backend=None, comm=None,
split_fn=split_rows, state_fn=None, check_every=1, timeout=600.0,
verify_batches=True, abort_on_error=True, grad_many=None)``

- ``grad_many(groups, batches)``: optional, as the thread Coordinator's (one
  call for this rank's groups of a micro-batch, the results of ``grad_fn`` for
  each with the same bits).

- ``comm``: an mpi4py intracommunicator (default ``MPI.COMM_WORLD``). The engine
  works on its own duplicate (made in :meth:`MPIEngine.start`), so its messages
  never mix with the caller's.
- ``state_fn() -> ndarray | sequence of ndarrays | mapping str -> ndarray``: what
  must stay identical on every rank (see :func:`weights_digest`). Required while
  ``check_every >= 1``; ``check_every = 0`` turns the automatic check off.
- ``timeout`` (seconds, finite, > 0): the bound on every blocking exchange,
  counted from the moment this rank enters it; it must cover the slowest rank's
  ``grad_fn`` time for its groups, as it waits for them.
- ``rank``, ``size``, ``is_root`` (rank 0: the one rank that logs, evaluates for
  display and writes checkpoints), ``allocation``, ``my_groups``, ``steps``,
  ``state``, ``last_digest``.
- ``start()`` / ``stop()`` / ``with engine:``: ``start`` is collective (it
  duplicates ``comm``); ``stop`` is local and idempotent, and returns True.
- ``run_step(batch)`` / ``run_accumulated([b0, ..., b_{A-1}]) -> StepResult``.
- ``barrier()``: all ranks reach this point (e.g. after rank 0 saved).
- ``broadcast_object(obj, root=0)``: ``root``'s ``obj`` (any picklable object) on
  every rank; other ranks pass anything (ignored), e.g. None.
- ``check_replicas(state=None) -> str``: the digest check now (``state``
  defaults to ``state_fn()``); returns the common digest.
- ``any_rank(flag) -> bool``: True on every rank if ``flag`` is True on any.

Every call that communicates is collective: all ranks must make the same
calls in the same order. Pausing is not offered (a paused rank would hold up
the others until their timeout).

Checkpoints and resume: rank 0 writes (``if engine.is_root: save(...)`` then
``engine.barrier()`` so no rank runs ahead of a checkpoint being written). To
resume, either every rank loads the same file (simple when the file system is
shared) or rank 0 loads it and ``state = engine.broadcast_object(state)`` hands
it to the others (when only rank 0 sees the file). Either way
``engine.check_replicas()`` right after proves the ranks start equal.

Stopping on a signal: mpiexec forwards SIGINT and SIGTERM to every rank, and
a ``KeyboardInterrupt`` raised inside an engine call aborts the job like any
other exception there (no checkpoint). For a clean stop, let a signal handler
set a flag and end the loop when ``engine.any_rank(flag)`` is True; then rank
0 saves a checkpoint of the step that every rank completed.

Failures never hang the job
---------------------------
MPI collectives block forever when a peer dies, so the engine never calls a
blocking MPI operation: each exchange posts non-blocking sends and receives
and polls them (``Request.Test``, sleeping 10 us doubling up to 2 ms between
polls) until they complete or ``timeout`` passes. Then:

- a peer that died or hangs: the survivors raise
  :class:`~cllm_spec.errors.QueueTimeoutError` naming the ranks they heard
  nothing from (and the call and step);
- any exception inside an engine call on a rank (``grad_fn`` or
  ``optimizer_step`` raised, a broken ``grad_fn`` contract, a timeout, a
  mismatch, an MPI error): the rank adds a note naming itself, and with
  ``abort_on_error`` (default) and ``size > 1`` writes the traceback to stderr
  prefixed ``cllm mpi: rank r of K``, waits 0.25 s (mpiexec forwards a rank's
  output through a pipe and could kill the job before reading the report) and
  calls ``MPI_Abort(comm, 1)``, which
  ends every rank of the job (mpiexec then exits non-zero; the rank itself
  leaves with ``os._exit(1)`` right after, since MPICH's MPI_Abort can return
  before the launcher's kill arrives, and a rank must not, say, write a
  checkpoint of the failed step meanwhile). With one rank there
  is no peer to release, so the exception is simply raised; with
  ``abort_on_error=False`` it is raised too, and the caller must end the job;
- an exception that leaves a ``with engine:`` block on one rank aborts the same
  way (the other ranks would otherwise wait in their next exchange), and while
  the engine runs, ``sys.excepthook`` is chained so that an uncaught exception
  elsewhere on a rank aborts the job too (restored by ``stop()``);
- a rank killed outright (``os._exit``, a signal): mpiexec (hydra) ends the
  job itself; if it does not (``-disable-auto-cleanup``, another launcher), the
  survivors' timeout does.

The duplicate communicator is never freed (``MPI_Comm_free`` is collective and
``stop`` must not block); ``MPI_Finalize`` releases it.

Running it on one machine
-------------------------
With the ``mpich`` wheel installed in the venv, ``mpiexec`` lives next to the
venv's python (``<venv>/bin/mpiexec``)::

    <venv>/bin/mpiexec -launcher fork -n 2 <venv>/bin/python train.py

``-launcher fork`` starts the ranks as local processes (no ssh); the ranks then
talk through shared memory, so no network beyond loopback is needed and no
``MPIR_CVAR_*`` setting is required. ``python train.py`` alone is a world of one
rank.

Errors: non-callable ``grad_fn``/``optimizer_step``/``split_fn``/``state_fn``, a
bad ``check_every`` or ``timeout``, ``state_fn`` missing while checks are on, or
a ``comm`` that is not an MPI communicator: ``ConfigError`` (raised by the
constructor, before any MPI call). A bad batch or ``split_fn`` result: the
coordinator's ``DTypeError``/``ShapeError``/``EmptyInputError`` (raised inside
the engine call, so with several ranks it aborts the job like any other). Calls
in the wrong state: ``LifecycleError`` (raised before the call starts, never
aborting). A failed engine is STOPPED: it takes no further calls.
"""

from __future__ import annotations

import math
import os
import pickle
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import numpy as np

from cllm_spec.checks import expect_flag, expect_in_range, expect_nonnegative_int
from cllm_spec.errors import (
    ConfigError,
    DTypeError,
    EmptyInputError,
    QueueTimeoutError,
    ReplicaMismatchError,
    ShapeError,
    Unsupported,
)
from cllm_spec.parallel.allocation import N_GROUPS, Allocation, allocate_groups
from cllm_spec.parallel.coordinator import (
    GradFn,
    OptimizerStep,
    SplitFn,
    StepResult,
    resolve_backend,
)
from cllm_spec.parallel.digests import batch_fingerprint, weights_digest
from cllm_spec.parallel.lifecycle import Lifecycle, LifecycleError, State
from cllm_spec.parallel.reduction import (
    GroupResult,
    finish_step,
    reduce_groups,
    validate_grad_output,
    validate_many_output,
)
from cllm_spec.parallel.split import split_rows

StateFn = Callable[[], Any]

_TAG_LEN = 7301  # the length message that precedes every payload
_TAG_DATA = 7302  # the payload itself
_POLL_MIN = 1e-5  # seconds between polls at first ...
_POLL_MAX = 2e-3  # ... doubling up to this: a peer's long grad_fn costs no CPU
_ABORT_GRACE = 0.25  # seconds between writing a failure report and MPI_Abort
_COMM_METHODS = ("Get_rank", "Get_size", "Idup", "Isend", "Irecv", "Abort")


# ------------------------------------------------------------------ helpers ----
def _import_mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise Unsupported(
            "MPIEngine needs mpi4py, which is not installed",
            hint="pip install 'cllm[mpi]' (mpi4py and the mpich wheel)",
        ) from exc
    return MPI


def _callable(name: str, fn: object) -> None:
    if not callable(fn):
        raise ConfigError(f"{name}: expected a callable, got {fn!r}")


def _ranks_text(ranks: Sequence[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


def _by_value(values: Sequence[Any]) -> dict[Any, list[int]]:
    """``{value: [ranks holding it]}``, in order of first appearance."""
    groups: dict[Any, list[int]] = {}
    for rank, v in enumerate(values):
        groups.setdefault(v, []).append(rank)
    return groups


def _abort_job(world: Any) -> None:
    """``MPI_Abort(world, 1)``, then leave at once.

    MPICH's MPI_Abort asks the launcher to kill every rank and may return before
    the kill arrives; the rank must not go on meanwhile (it might write a
    checkpoint of a failed step), so it exits with status 1 itself.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    # The launcher forwards a rank's output through a pipe and may kill the job
    # on the abort before it read the report just written: give it a moment.
    time.sleep(_ABORT_GRACE)
    try:
        world.Abort(1)
    finally:
        os._exit(1)


# ------------------------------------------------------------------- engine ----
class MPIEngine:
    """One rank of a data-parallel job (see the module doc)."""

    def __init__(
        self,
        grad_fn: GradFn,
        optimizer_step: OptimizerStep,
        *,
        backend: Any = None,
        comm: Any = None,
        split_fn: SplitFn = split_rows,
        state_fn: StateFn | None = None,
        check_every: int = 1,
        timeout: float = 600.0,
        verify_batches: bool = True,
        abort_on_error: bool = True,
        grad_many: Callable[[list[int], list[Any]], Sequence[Any]] | None = None,
    ) -> None:
        _callable("grad_fn", grad_fn)
        if grad_many is not None:
            _callable("grad_many", grad_many)
        _callable("optimizer_step", optimizer_step)
        _callable("split_fn", split_fn)
        self._check_every = expect_nonnegative_int("check_every", check_every)
        if state_fn is not None:
            _callable("state_fn", state_fn)
        elif self._check_every > 0:
            raise ConfigError(
                "state_fn: required while check_every >= 1 (the engine compares "
                "the digests of state_fn() across ranks)",
                hint="pass state_fn=lambda: params, or check_every=0 to turn it off",
            )
        self._timeout = expect_in_range("timeout", timeout, 0.0, math.inf, lo_open=True)
        self._grad_fn = grad_fn
        self._grad_many = grad_many
        self._optimizer_step = optimizer_step
        self._split_fn = split_fn
        self._state_fn = state_fn
        self._verify_batches = expect_flag("verify_batches", verify_batches)
        self._abort_on_error = expect_flag("abort_on_error", abort_on_error)
        self._backend = resolve_backend(backend)
        if comm is None:
            comm = _import_mpi().COMM_WORLD
        missing = [m for m in _COMM_METHODS if not callable(getattr(comm, m, None))]
        if missing:
            raise ConfigError(
                f"comm: expected an mpi4py intracommunicator, got "
                f"{type(comm).__name__} (lacks {missing})"
            )
        self._world = comm  # the caller's: used for Abort only
        self._comm: Any = None  # our duplicate, made by start()
        self._rank = int(comm.Get_rank())
        self._size = int(comm.Get_size())
        self._allocation = allocate_groups(self._size)
        self._lifecycle = Lifecycle()
        self._seq = 0  # engine calls that communicated, the same count on all ranks
        self._steps = 0
        self._busy = threading.Lock()
        self._last_digest: str | None = None
        self._hook: Any = None  # our excepthook while installed
        self._previous_hook: Any = None

    # -------------------------------------------------------- properties ----
    @property
    def rank(self) -> int:
        return self._rank

    @property
    def size(self) -> int:
        return self._size

    @property
    def is_root(self) -> bool:
        """True on rank 0, the rank that logs and writes checkpoints."""
        return self._rank == 0

    @property
    def allocation(self) -> Allocation:
        """The 12 groups over the ``size`` ranks (ranks play workers)."""
        return self._allocation

    @property
    def my_groups(self) -> tuple[int, ...]:
        """The groups this rank computes (empty for ranks >= 12)."""
        return self._allocation.groups[self._rank]

    @property
    def steps(self) -> int:
        """Optimizer steps taken."""
        return self._steps

    @property
    def state(self) -> State:
        return self._lifecycle.state

    @property
    def last_digest(self) -> str | None:
        """The digest the ranks last agreed on (None before the first check)."""
        return self._last_digest

    # --------------------------------------------------------- lifecycle ----
    def start(self) -> None:
        """INITIALIZING -> RUNNING. Collective: duplicates ``comm``."""
        self._lifecycle.expect(State.INITIALIZING, what="start")
        with self._guard("start"):
            dup, request = self._world.Idup()
            self._wait([(None, request)], "start (MPI_Comm_idup)")
            self._comm = dup
            self._lifecycle.transition(
                State.RUNNING, what="start", only_from=State.INITIALIZING
            )
        if self._abort_on_error and self._size > 1:
            self._install_excepthook()

    def stop(self) -> bool:
        """-> STOPPED (local, idempotent); restores ``sys.excepthook``."""
        if self._lifecycle.state not in (State.STOPPING, State.STOPPED):
            self._lifecycle.transition(State.STOPPING, what="stop")
        if self._lifecycle.state is State.STOPPING:
            self._lifecycle.transition(State.STOPPED, what="stop")
        self._remove_excepthook()
        return True

    def __enter__(self) -> MPIEngine:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            # The other ranks would wait for this one in their next exchange.
            self._abort(exc, "the with-block")
        self.stop()

    # ------------------------------------------------------------- steps ----
    def run_step(self, batch: Any) -> StepResult:
        """One optimizer step over ``batch`` (see the module doc). Collective."""
        return self.run_accumulated([batch])

    def run_accumulated(self, micro_batches: list[Any]) -> StepResult:
        """One optimizer step over ``A >= 1`` micro-batches. Collective."""
        step = self._steps
        with self._guard(f"step {step}"):
            if not isinstance(micro_batches, list):
                raise DTypeError(
                    "micro_batches: expected a list, got "
                    f"{type(micro_batches).__name__}",
                    hint="use run_step(batch) for a single batch",
                )
            if not micro_batches:
                raise EmptyInputError("micro_batches: expected at least one")
            result = self._step(step, micro_batches)
            self._steps += 1
            if self._check_every and self._steps % self._check_every == 0:
                self._check(None)
            return result

    def _step(self, step: int, micro_batches: list[Any]) -> StepResult:
        start = time.monotonic()
        parts = [self._split(m, b) for m, b in enumerate(micro_batches)]
        fingerprint = batch_fingerprint(parts) if self._verify_batches else ""
        mine = self._compute_mine(parts)
        gathered = self._exchange(f"step {step}", (fingerprint, mine))
        self._expect_same(
            [fp for fp, _ in gathered], f"step {step}: the batches differ"
        )
        results = self._collect(parts, [own for _, own in gathered], step)
        n_micro = len(micro_batches)
        micro_sums = [
            reduce_groups(self._backend, [r for r in results if r.micro == m])
            for m in range(n_micro)
        ]
        grad, loss, tokens = finish_step(self._backend, micro_sums, results)
        opt = self._optimizer_step(grad, loss)
        seconds = time.monotonic() - start
        return StepResult(step, loss, tokens, n_micro, len(results), seconds, opt)

    def _split(self, m: int, batch: Any) -> Sequence[Any]:
        """The 12 group micro-batches of micro-batch ``m`` (validated as the
        coordinator does)."""
        parts = self._split_fn(batch, N_GROUPS)
        if not isinstance(parts, list | tuple) or len(parts) != N_GROUPS:
            raise ShapeError(
                f"split_fn: expected {N_GROUPS} group micro-batches for "
                f"micro-batch {m}, got {type(parts).__name__}"
                + (f" of length {len(parts)}" if hasattr(parts, "__len__") else "")
            )
        if all(p is None for p in parts):
            raise EmptyInputError(f"micro-batch {m}: every group is empty")
        return parts

    def _tasks(
        self, parts: Sequence[Sequence[Any]], rank: int | None = None
    ) -> list[tuple[int, int]]:
        """``(micro, group)`` pairs ``rank`` (default: this one) computes, in order."""
        owned = self._allocation.groups[self._rank if rank is None else rank]
        return [
            (m, g)
            for m, groups in enumerate(parts)
            for g in owned
            if groups[g] is not None
        ]

    def _compute_mine(self, parts: Sequence[Sequence[Any]]) -> list[GroupResult]:
        """This rank's groups, with ``grad_many`` one call per micro-batch."""
        tasks = self._tasks(parts)
        if self._grad_many is None:
            return [self._compute(m, g, parts[m][g]) for m, g in tasks]
        out: list[GroupResult] = []
        for m in sorted({m for m, _ in tasks}):
            groups = [g for mm, g in tasks if mm == m]
            if len(groups) == 1:
                out.append(self._compute(m, groups[0], parts[m][groups[0]]))
                continue
            try:
                outs = self._grad_many(groups, [parts[m][g] for g in groups])
                out.extend(validate_many_output(outs, m, groups))
            except BaseException as exc:
                exc.add_note(
                    f"raised by grad_many on groups {', '.join(map(str, groups))} "
                    f"of micro-batch {m}"
                )
                raise
        return out

    def _compute(self, m: int, g: int, part: Any) -> GroupResult:
        try:
            out = self._grad_fn(g, part)
        except BaseException as exc:
            exc.add_note(f"raised by grad_fn on group {g} of micro-batch {m}")
            raise
        grads, loss_sum, n_tokens = validate_grad_output(out, f"grad_fn(group {g})")
        return GroupResult(m, g, grads, loss_sum, n_tokens)

    def _collect(
        self,
        parts: Sequence[Sequence[Any]],
        per_rank: Sequence[Sequence[GroupResult]],
        step: int,
    ) -> list[GroupResult]:
        """All ranks' results in (micro-batch, group) order: the order of the bits.

        Each rank must have sent exactly the pairs the allocation gives it.
        """
        for rank, own in enumerate(per_rank):
            got = [(r.micro, r.group) for r in own]
            want = self._tasks(parts, rank)
            if got != want:
                raise ReplicaMismatchError(
                    f"step {step}: rank {rank} sent the results of {got}, "
                    f"expected {want}"
                )
        everything = [r for own in per_rank for r in own]
        return sorted(everything, key=lambda r: (r.micro, r.group))

    # ------------------------------------------------------- collectives ----
    def barrier(self) -> None:
        """Return once every rank called it. Collective."""
        with self._guard("barrier"):
            self._exchange("barrier", None)

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        """``root``'s ``obj`` on every rank (pickled). Collective."""
        with self._guard("broadcast_object"):
            if isinstance(root, bool) or not isinstance(root, int):
                raise ConfigError(f"root: expected an int, got {type(root).__name__}")
            if not 0 <= root < self._size:
                raise ConfigError(
                    f"root: expected 0 <= root < {self._size}, got {root}"
                )
            sent = obj if self._rank == root else None
            return self._exchange(f"broadcast_object(root={root})", sent)[root]

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on at least one. Collective.

        For stopping together: a rank that wants to stop (a signal handler set
        its flag, a time budget ran out) calls this at the step boundary like
        every other rank, and all of them leave the loop after the same step.
        """
        with self._guard("any_rank"):
            wanted = expect_flag("flag", flag)
            return any(self._exchange("any_rank", wanted))

    def check_replicas(self, state: Any = None) -> str:
        """The digest of ``state`` (default ``state_fn()``), equal on every rank;
        else ReplicaMismatchError naming the ranks. Collective."""
        with self._guard("check_replicas"):
            return self._check(state)

    def _check(self, state: Any) -> str:
        if state is None:
            if self._state_fn is None:
                raise ConfigError("check_replicas: no state given and no state_fn")
            state = self._state_fn()
        digest = weights_digest(state)
        digests = self._exchange(f"digest after {self._steps} steps", digest)
        self._expect_same(
            digests, f"the weights differ between ranks after {self._steps} steps"
        )
        self._last_digest = digest
        return digest

    def _expect_same(self, values: Sequence[Any], what: str) -> None:
        groups = _by_value(values)
        if len(groups) > 1:
            held = "; ".join(
                f"{_ranks_text(ranks)}: {str(v)[:16]}" for v, ranks in groups.items()
            )
            raise ReplicaMismatchError(f"{what} ({held})")

    # ---------------------------------------------------------- exchange ----
    def _exchange(self, what: str, obj: Any) -> list[Any]:
        """Every rank's ``obj``, indexed by rank; checks all ranks are in the same
        call (``what`` and the sequence number)."""
        self._lifecycle.expect(State.RUNNING, what=what)
        seq = self._seq
        self._seq += 1
        if self._size == 1:
            return [obj]
        payload = pickle.dumps((what, seq, obj), protocol=pickle.HIGHEST_PROTOCOL)
        raw = self._allgather_bytes(payload, f"{what} (call #{seq})")
        out: list[Any] = []
        calls: list[tuple[str, int]] = []
        for rank, data in enumerate(raw):
            if rank == self._rank:
                calls.append((what, seq))
                out.append(obj)
                continue
            their_what, their_seq, their_obj = pickle.loads(data)
            calls.append((their_what, their_seq))
            out.append(their_obj)
        groups = _by_value(calls)
        if len(groups) > 1:
            held = "; ".join(
                f"{_ranks_text(ranks)} in {w!r} (call #{s})"
                for (w, s), ranks in groups.items()
            )
            raise ReplicaMismatchError(f"the ranks are in different calls: {held}")
        return out

    def _allgather_bytes(self, payload: bytes, what: str) -> list[bytes]:
        """Every rank's payload (this rank's as given), by non-blocking
        point-to-point messages: a length, then the bytes."""
        comm = self._comm
        peers = [q for q in range(self._size) if q != self._rank]
        mine = np.frombuffer(payload, dtype=np.uint8)
        my_len = np.array([mine.size], dtype=np.int64)
        lengths = {q: np.zeros(1, dtype=np.int64) for q in peers}
        sends = [(q, comm.Isend(my_len, dest=q, tag=_TAG_LEN)) for q in peers]
        sends += [(q, comm.Isend(mine, dest=q, tag=_TAG_DATA)) for q in peers]
        deadline = time.monotonic() + self._timeout
        self._wait(
            [(q, comm.Irecv(lengths[q], source=q, tag=_TAG_LEN)) for q in peers],
            what,
            deadline,
        )
        bufs = {q: np.empty(int(lengths[q][0]), dtype=np.uint8) for q in peers}
        receives = [(q, comm.Irecv(bufs[q], source=q, tag=_TAG_DATA)) for q in peers]
        self._wait(receives + sends, what, deadline)
        return [
            payload if q == self._rank else bufs[q].tobytes() for q in range(self._size)
        ]

    def _wait(
        self,
        requests: Sequence[tuple[int | None, Any]],
        what: str,
        deadline: float | None = None,
    ) -> None:
        """Poll ``requests`` (peer rank or None, request) until all complete;
        QueueTimeoutError naming the peers still pending at the deadline."""
        if deadline is None:
            deadline = time.monotonic() + self._timeout
        pending = list(requests)
        delay = _POLL_MIN
        while True:
            pending = [(q, r) for q, r in pending if not r.Test()]
            if not pending:
                return
            if time.monotonic() >= deadline:
                peers = sorted({q for q, _ in pending if q is not None})
                who = _ranks_text(peers) if peers else "some rank (MPI names none)"
                raise QueueTimeoutError(
                    f"{what}: nothing from {who} within {self._timeout} s "
                    f"(waiting on rank {self._rank} of {self._size})",
                    hint="that rank died, hangs, or is far slower than the others: "
                    "see its stderr; raise timeout if it is just slow",
                )
            time.sleep(delay)
            delay = min(2.0 * delay, _POLL_MAX)

    # ---------------------------------------------------------- failures ----
    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """One engine call at a time; any exception in it ends the job."""
        if not self._busy.acquire(blocking=False):
            raise LifecycleError(f"{what}: another engine call is in progress")
        try:
            if what != "start":
                self._lifecycle.expect(State.RUNNING, what=what)
        except LifecycleError:
            self._busy.release()
            raise
        try:
            yield
        except BaseException as exc:
            exc.add_note(f"on MPI rank {self._rank} of {self._size}, in {what}")
            self._abort(exc, what)
            self._fail()
            raise
        finally:
            self._busy.release()

    def _fail(self) -> None:
        """A failed engine is stopped: its peers can no longer rely on it."""
        if self._lifecycle.state not in (State.STOPPING, State.STOPPED):
            self._lifecycle.transition(State.STOPPING, what="failure")
            self._lifecycle.transition(State.STOPPED, what="failure")
        self._remove_excepthook()

    def _abort(self, exc: BaseException, what: str) -> None:
        """Report ``exc`` and end the whole job (when that is the policy)."""
        if not self._abort_on_error or self._size == 1:
            return
        report = "".join(traceback.format_exception(exc))
        sys.stderr.write(
            f"cllm mpi: rank {self._rank} of {self._size} failed in {what}; "
            f"calling MPI_Abort(1) to end every rank\n{report}"
        )
        sys.stderr.flush()
        _abort_job(self._world)

    def _install_excepthook(self) -> None:
        previous = sys.excepthook
        rank, size, world = self._rank, self._size, self._world

        def hook(
            tp: type[BaseException], value: BaseException, tb: TracebackType | None
        ) -> None:
            previous(tp, value, tb)
            sys.stderr.write(
                f"cllm mpi: rank {rank} of {size}: uncaught {tp.__name__}; calling "
                f"MPI_Abort(1) so the other ranks do not wait for this one\n"
            )
            _abort_job(world)

        self._previous_hook, self._hook = previous, hook
        sys.excepthook = hook

    def _remove_excepthook(self) -> None:
        if self._hook is not None and sys.excepthook is self._hook:
            sys.excepthook = self._previous_hook
        self._hook = self._previous_hook = None


__all__ = ["MPIEngine", "weights_digest"]
