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

This module holds the engine and its calls; its parts are in
:mod:`~cllm_spec.parallel.mpi_groups` (a rank's share of a step, and every
rank's results back in group order), :mod:`~cllm_spec.parallel.mpi_transport`
(the messages between the ranks, and their timeouts),
:mod:`~cllm_spec.parallel.mpi_abort` (ending the job when a rank fails) and
:mod:`~cllm_spec.parallel.digests` (what the ranks compare).

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
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from cllm_spec.checks import expect_flag, expect_in_range, expect_nonnegative_int
from cllm_spec.errors import ConfigError, DTypeError, EmptyInputError, Unsupported
from cllm_spec.parallel.allocation import Allocation, allocate_groups
from cllm_spec.parallel.coordinator import (
    GradFn,
    OptimizerStep,
    SplitFn,
    StepResult,
    resolve_backend,
)
from cllm_spec.parallel.digests import batch_fingerprint, weights_digest
from cllm_spec.parallel.lifecycle import Lifecycle, LifecycleError, State
from cllm_spec.parallel.mpi_abort import AbortHook, report_and_abort
from cllm_spec.parallel.mpi_groups import RankGroups
from cllm_spec.parallel.mpi_transport import MPITransport, expect_same
from cllm_spec.parallel.reduction import finish_step, reduce_groups
from cllm_spec.parallel.split import split_rows

StateFn = Callable[[], Any]

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
        self._optimizer_step = optimizer_step
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
        self._rank = int(comm.Get_rank())
        self._size = int(comm.Get_size())
        self._allocation = allocate_groups(self._size)
        self._groups = RankGroups(
            self._allocation, self._rank, grad_fn, grad_many, split_fn
        )
        # its comm is our duplicate of the caller's, made by start()
        self._transport = MPITransport(self._rank, self._size, self._timeout)
        self._lifecycle = Lifecycle()
        self._steps = 0
        self._busy = threading.Lock()
        self._last_digest: str | None = None
        self._hook = AbortHook()  # sys.excepthook, chained while running

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
            self._transport.wait([(None, request)], "start (MPI_Comm_idup)")
            self._transport.comm = dup
            self._lifecycle.transition(
                State.RUNNING, what="start", only_from=State.INITIALIZING
            )
        if self._abort_on_error and self._size > 1:
            self._hook.install(self._rank, self._size, self._world)

    def stop(self) -> bool:
        """-> STOPPED (local, idempotent); restores ``sys.excepthook``."""
        if self._lifecycle.state not in (State.STOPPING, State.STOPPED):
            self._lifecycle.transition(State.STOPPING, what="stop")
        if self._lifecycle.state is State.STOPPING:
            self._lifecycle.transition(State.STOPPED, what="stop")
        self._hook.remove()
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
        parts = [self._groups.split(m, b) for m, b in enumerate(micro_batches)]
        fingerprint = batch_fingerprint(parts) if self._verify_batches else ""
        mine = self._groups.compute_mine(parts)
        gathered = self._exchange(f"step {step}", (fingerprint, mine))
        expect_same([fp for fp, _ in gathered], f"step {step}: the batches differ")
        results = self._groups.collect(parts, [own for _, own in gathered], step)
        n_micro = len(micro_batches)
        micro_sums = [
            reduce_groups(self._backend, [r for r in results if r.micro == m])
            for m in range(n_micro)
        ]
        grad, loss, tokens = finish_step(self._backend, micro_sums, results)
        opt = self._optimizer_step(grad, loss)
        seconds = time.monotonic() - start
        return StepResult(step, loss, tokens, n_micro, len(results), seconds, opt)

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
        expect_same(
            digests, f"the weights differ between ranks after {self._steps} steps"
        )
        self._last_digest = digest
        return digest

    # ---------------------------------------------------------- exchange ----
    def _exchange(self, what: str, obj: Any) -> list[Any]:
        """Every rank's ``obj``, indexed by rank, while RUNNING (the messages:
        :meth:`~cllm_spec.parallel.mpi_transport.MPITransport.exchange`)."""
        self._lifecycle.expect(State.RUNNING, what=what)
        return self._transport.exchange(what, obj)

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
        self._hook.remove()

    def _abort(self, exc: BaseException, what: str) -> None:
        """Report ``exc`` and end the whole job (when that is the policy)."""
        if not self._abort_on_error or self._size == 1:
            return
        report_and_abort(exc, what, self._rank, self._size, self._world)


__all__ = ["MPIEngine", "weights_digest"]
