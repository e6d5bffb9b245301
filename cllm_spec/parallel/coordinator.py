"""The coordinator ("node zero") and its worker threads.

::

    coord = Coordinator(n_workers, grad_fn, optimizer_step, backend=backend)
    with coord:                                  # start() ... stop()
        coord.start_epoch(0)
        result = coord.run_step(batch)           # one optimizer step
        result = coord.run_accumulated([b0, b1]) # one step over 2 micro-batches
        coord.checkpoint(save)                   # between steps
        coord.end_epoch()
    coord.stats(), coord.total_stats(), coord.reset_stats()

Roles
-----
The coordinator is the thread that calls :meth:`Coordinator.run_step` (the
trainer's thread). It never computes a gradient: it cuts the batch, hands the
pieces to the workers, reduces their gradients and calls
``optimizer_step(grad, loss)`` once per step, always on its own thread, so the
parameters and the optimizer state are only ever touched there. The ``n``
workers are long-lived daemon threads named ``cllm-worker-<c>-<w>`` (``c`` numbers
coordinators in this process, ``w`` the worker). ``grad_fn(group, micro_batch)``
runs only on worker threads, concurrently, so it must not write shared state
(the model's forward and backward allocate per call).

One step
--------
1. Each micro-batch is cut by ``split_fn(batch, 12)`` (default
   :func:`~cllm_spec.parallel.split.split_rows`: contiguous row ranges) into 12
   group micro-batches, ``None`` for an empty group. The cut does not depend on
   ``n``.
2. Group ``g`` goes to worker ``allocation.group_to_worker[g]``
   (:func:`~cllm_spec.parallel.allocation.allocate_groups`); each worker gets one
   message holding all its groups of the step, in (micro-batch, group) order.
   Workers beyond the 12th own no group, get no message and stay idle.
3. Each worker calls ``grad_fn`` per group; every result goes into its own buffer
   (the returned array), with its loss sum and token count
   (:mod:`cllm_spec.parallel.reduction` gives the contract). Given
   ``grad_many``, a worker makes one call ``grad_many(groups, batches)`` for
   its groups of a micro-batch instead, which returns the results
   ``grad_fn`` would give for each, in order and with the same bits (the
   trainer's runs them in one forward and backward, see
   :mod:`cllm_spec.model_groups`). An error it raises is reported on all the
   groups of the call (below).
4. The coordinator reduces each micro-batch's group gradients as soon as that
   micro-batch is complete, by the backend's fixed tree in group order, then the
   micro-batch sums by the same tree in micro-batch order, then divides by the
   step's token count. Which worker finished first changes nothing, so 1, 2, 3,
   12 or 24 workers give the same bits on a deterministic backend.
5. ``optimizer_step(grad, loss)`` is called once; its return value is kept in
   :class:`StepResult` ``.optimizer_result`` (e.g. the pre-clip norm).

From the moment the step's last group result arrives until ``optimizer_step``
returns, no worker computes: the coordinator runs that tail (the last
micro-batch's reduction, the final sum, the optimizer step) inside
``serial()``, a context manager factory (default: none). An engine that gave
each worker a share of the kernel threads hands them all back there.

Failures
--------
- A ``grad_fn`` that raises (or returns something that breaks the contract) ends
  the run: the coordinator stops every worker, joins the threads (at most
  ``join_timeout`` seconds in total), fires ``on_error(error, worker)`` and
  raises **that exception object** from ``run_step``, with a note naming the
  worker, its thread, the group (for ``grad_many``, every group of the call),
  micro-batch and step. If several workers fail, the first failure to reach
  the coordinator is raised.
- No result within ``timeout`` seconds of the step's start: the same stop, then
  ``QueueTimeoutError`` naming the missing groups and their workers (a thread
  stuck inside ``grad_fn`` cannot be killed; it is a daemon and exits after its
  call returns).
- Any other error once work was handed out (in the reduction, no counted token
  in the step: ``EmptyInputError``, in ``optimizer_step``, an interrupt) also
  stops the coordinator and is re-raised, because the step is half done.
- Errors found before any work is handed out (a bad batch, a bad ``split_fn``
  result, a lifecycle error) and errors raised by callbacks propagate without
  changing the state.

Lifecycle
---------
See :mod:`cllm_spec.parallel.lifecycle`. ``start()`` (INITIALIZING -> RUNNING)
starts the threads; ``pause()``/``resume()`` move between RUNNING and PAUSED from
any thread: a paused coordinator finishes the step in flight, and ``run_step``
then blocks until ``resume()`` (or raises LifecycleError if ``stop()`` comes
first). ``stop()`` goes through STOPPING to STOPPED, joins the threads and
returns whether all of them ended in time; it is idempotent (a second call, or a
call after a failure stopped the run, returns at once), so it is safe in a
``finally``. Other illegal moves (``start`` twice, ``resume`` while running,
``run_step`` before ``start`` or after ``stop``, two ``run_step`` at once) raise
:class:`~cllm_spec.parallel.lifecycle.LifecycleError`.

Callbacks
---------
Objects with any of the methods of :class:`Callbacks` (subclass it); each event
is delivered to every callback in list order, on the coordinator's thread:
``on_epoch_start(epoch)``, ``on_epoch_end(epoch)`` (from :meth:`start_epoch` /
:meth:`end_epoch`), ``on_step_start(step)`` before the work is handed out,
``on_step_end(step, result)`` after the optimizer step, ``on_checkpoint(step,
info)`` after :meth:`checkpoint` saved (``info`` is what the save function
returned), ``on_error(error, worker)`` after a failure stopped the run (``worker``
is None when the coordinator itself failed). ``step`` is the 0-based index of
the optimizer step. An exception raised by ``on_error`` is attached to the
original error as a note; the original error is raised.

Statistics
----------
:meth:`stats` is one :class:`~cllm_spec.parallel.stats.WorkerStats` per worker
(groups computed, tokens, busy and idle seconds since the last
:meth:`reset_stats`); :meth:`total_stats` merges them. The token total equals
the sum of the ``n_tokens`` of every group computed.

Queues
------
The worker threads, their inboxes and their statistics are
:class:`cllm_spec.parallel.workers.Crew`'s.
Results travel to the coordinator through the backend's bounded BatchQueue
(``backend.make_batch_queue``): many producers, one consumer, and its close
semantics wake blocked workers when the run stops. Each worker's inbox is a
:class:`~cllm_spec.parallel.messages.MessageQueue` instead, because the stop
message is CRITICAL and must overtake work still queued for that worker, which
a FIFO cannot do.

Parts
-----
A step's plan and its fixed-order reduction are
:mod:`~cllm_spec.parallel.coordinator_step`'s; :class:`StepResult`,
:class:`Callbacks` and the function types are
:mod:`~cllm_spec.parallel.coordinator_types`'s, and this module re-exports them.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any

from cllm_spec.checks import expect_in_range, expect_nonnegative_int
from cllm_spec.errors import (
    ConfigError,
    DTypeError,
    EmptyInputError,
    QueueClosedError,
    QueueTimeoutError,
)
from cllm_spec.parallel.allocation import N_GROUPS, Allocation, allocate_groups
from cllm_spec.parallel.coordinator_step import StepReduction, plan_step
from cllm_spec.parallel.coordinator_types import (
    Callbacks,
    GradFn,
    OptimizerStep,
    SplitFn,
    StepResult,
)
from cllm_spec.parallel.lifecycle import Lifecycle, LifecycleError, State
from cllm_spec.parallel.split import split_rows
from cllm_spec.parallel.stats import WorkerStats
from cllm_spec.parallel.workers import Crew, Done, Failed, Task, Work

_REQUIRED_BACKEND = ("grad_tree_reduce", "grad_scale", "make_batch_queue")
_coordinator_ids = itertools.count()


# ------------------------------------------------------------- coordinator ----
class Coordinator:
    """Worker threads computing group gradients for one optimizer (module doc)."""

    def __init__(
        self,
        n_workers: int,
        grad_fn: GradFn,
        optimizer_step: OptimizerStep,
        *,
        backend: Any = None,
        split_fn: SplitFn = split_rows,
        callbacks: Sequence[Any] = (),
        timeout: float | None = 600.0,
        join_timeout: float = 5.0,
        serial: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
        grad_many: Callable[[list[int], list[Any]], Sequence[Any]] | None = None,
    ) -> None:
        self._allocation = allocate_groups(n_workers)
        for name, fn in (
            ("grad_fn", grad_fn),
            ("optimizer_step", optimizer_step),
            ("split_fn", split_fn),
            ("serial", serial),
            ("grad_many", grad_many or grad_fn),
        ):
            if not callable(fn):
                raise ConfigError(f"{name}: expected a callable, got {fn!r}")
        self._optimizer_step = optimizer_step
        self._split_fn = split_fn
        self._serial = serial
        self._backend = resolve_backend(backend)
        self._callbacks = tuple(callbacks)
        self._timeout = (
            None
            if timeout is None
            else expect_in_range("timeout", timeout, 0.0, math.inf, lo_open=True)
        )
        self._join_timeout = expect_in_range(
            "join_timeout", join_timeout, 0.0, math.inf, lo_open=True
        )
        n = self._allocation.n_workers
        self._id = next(_coordinator_ids)
        self._lifecycle = Lifecycle()
        self._results = self._backend.make_batch_queue(max(N_GROUPS, n))
        self._crew = Crew(n, self.thread_prefix, grad_fn, grad_many, self._results)
        self._stop_lock = threading.Lock()
        self._step_lock = threading.Lock()
        self._step_owner: int | None = None
        self._steps = 0
        self._epoch: int | None = None

    # -------------------------------------------------------- properties ----
    @property
    def n_workers(self) -> int:
        return self._allocation.n_workers

    @property
    def allocation(self) -> Allocation:
        return self._allocation

    @property
    def state(self) -> State:
        return self._lifecycle.state

    @property
    def history(self) -> tuple[State, ...]:
        """Every state entered so far, in order."""
        return self._lifecycle.history

    @property
    def steps(self) -> int:
        """Optimizer steps taken."""
        return self._steps

    @property
    def epoch(self) -> int | None:
        """The open epoch, or None."""
        return self._epoch

    @property
    def thread_prefix(self) -> str:
        """Worker ``w``'s thread is named ``thread_prefix + str(w)``."""
        return f"cllm-worker-{self._id}-"

    def alive_workers(self) -> tuple[int, ...]:
        """Workers whose thread is still running."""
        return self._crew.alive()

    # --------------------------------------------------------- lifecycle ----
    def start(self) -> None:
        """INITIALIZING -> RUNNING; starts the worker threads."""
        self._lifecycle.transition(
            State.RUNNING, what="start", only_from=State.INITIALIZING
        )
        self._crew.start()

    def pause(self) -> None:
        """RUNNING -> PAUSED; the step in flight finishes, later steps wait."""
        self._lifecycle.transition(State.PAUSED, what="pause")

    def resume(self) -> None:
        """PAUSED -> RUNNING."""
        self._lifecycle.transition(State.RUNNING, what="resume", only_from=State.PAUSED)

    def stop(self) -> bool:
        """Stop and join every worker; True if all threads ended in time."""
        self._shutdown()
        return not self.alive_workers()

    def __enter__(self) -> Coordinator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _shutdown(self) -> None:
        """-> STOPPING -> STOPPED, once; later callers wait for the first."""
        with self._stop_lock:
            if self._lifecycle.state is State.STOPPED:
                return
            self._lifecycle.transition(State.STOPPING, what="stop")
            self._crew.stop(self._join_timeout)
            self._lifecycle.transition(State.STOPPED, what="stop")

    # ------------------------------------------------------------ epochs ----
    def start_epoch(self, epoch: int) -> None:
        """Open epoch ``epoch`` (an int >= 0) and fire ``on_epoch_start``."""
        self._lifecycle.expect(State.RUNNING, State.PAUSED, what="start_epoch")
        e = expect_nonnegative_int("epoch", epoch)
        if self._epoch is not None:
            raise LifecycleError(f"start_epoch: epoch {self._epoch} is still open")
        self._epoch = e
        self._fire("on_epoch_start", e)

    def end_epoch(self) -> None:
        """Close the open epoch and fire ``on_epoch_end``."""
        self._lifecycle.expect(State.RUNNING, State.PAUSED, what="end_epoch")
        if self._epoch is None:
            raise LifecycleError("end_epoch: no epoch is open")
        e, self._epoch = self._epoch, None
        self._fire("on_epoch_end", e)

    # -------------------------------------------------------- checkpoint ----
    def checkpoint(self, save: Callable[[], Any]) -> Any:
        """Run ``save()`` between steps, fire ``on_checkpoint``, return its value.

        Waits for a step in flight on another thread; from a callback of the
        running step (same thread) it runs at once, since no work is in flight
        at a callback.
        """
        self._lifecycle.expect(State.RUNNING, State.PAUSED, what="checkpoint")
        if not callable(save):
            raise ConfigError(f"save: expected a callable, got {save!r}")
        if self._step_owner == threading.get_ident():
            info = save()
        else:
            with self._step_lock:
                self._lifecycle.expect(State.RUNNING, State.PAUSED, what="checkpoint")
                info = save()
        self._fire("on_checkpoint", self._steps, info)
        return info

    # ------------------------------------------------------------- steps ----
    def run_step(self, batch: Any) -> StepResult:
        """One optimizer step over ``batch`` (see the module doc)."""
        return self.run_accumulated([batch])

    def run_accumulated(self, micro_batches: list[Any]) -> StepResult:
        """One optimizer step over a list of ``A >= 1`` micro-batches."""
        if not isinstance(micro_batches, list):
            raise DTypeError(
                f"micro_batches: expected a list, got {type(micro_batches).__name__}",
                hint="use run_step(batch) for a single batch",
            )
        if not micro_batches:
            raise EmptyInputError("micro_batches: expected at least one micro-batch")
        self._lifecycle.wait_while_paused(what="run_step")
        if not self._step_lock.acquire(blocking=False):
            raise LifecycleError("run_step: another step is in progress")
        try:
            self._lifecycle.expect(State.RUNNING, what="run_step")
            self._step_owner = threading.get_ident()
            tasks, n_tasks = plan_step(self._split_fn, self._allocation, micro_batches)
            return self._execute(tasks, len(micro_batches), n_tasks)
        finally:
            self._step_owner = None
            self._step_lock.release()

    def _execute(
        self, tasks: list[list[Task]], n_micro: int, n_tasks: int
    ) -> StepResult:
        step = self._steps
        start = time.monotonic()
        self._fire("on_step_start", step)
        try:
            outcome = self._compute(step, tasks, n_micro)
        except BaseException as exc:
            self._fail(exc, None)
            raise
        if isinstance(outcome, Failed):
            error = outcome.error
            where = (
                f"group {outcome.group}"
                if not outcome.together
                else "groups "
                + ", ".join(map(str, outcome.together))
                + " (computed in one grad_many call)"
            )
            error.add_note(
                f"raised by worker {outcome.worker} (thread "
                f"{self.thread_prefix}{outcome.worker}) on {where} "
                f"of micro-batch {outcome.micro} in step {outcome.step}"
            )
            self._fail(error, outcome.worker)
            raise error
        loss, tokens, opt = outcome
        self._steps += 1
        result = StepResult(
            step, loss, tokens, n_micro, n_tasks, time.monotonic() - start, opt
        )
        self._fire("on_step_end", step, result)
        return result

    def _compute(
        self, step: int, tasks: list[list[Task]], n_micro: int
    ) -> tuple[float, int, Any] | Failed:
        """Hand out the work, reduce in the fixed order, take the optimizer step."""
        reduction = StepReduction(self._backend, tasks, n_micro)
        for w, own in enumerate(tasks):
            if own:
                self._dispatch(w, Work(step, tuple(own)))
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:  # plan_step gives every step at least one task
            msg = self._next_result(step, reduction.pending, deadline)
            if isinstance(msg, Failed):
                return msg
            if reduction.add(msg.result):
                break  # the tail below reduces the last micro-batch
        with self._serial():  # every worker is idle now
            grad, loss, tokens = reduction.finish()
            return loss, tokens, self._optimizer_step(grad, loss)

    def _dispatch(self, worker: int, work: Work) -> None:
        try:
            self._crew.dispatch(worker, work, self._join_timeout)
        except QueueClosedError:
            raise LifecycleError(
                f"step {work.step}: the coordinator was stopped during the step"
            ) from None

    def _next_result(
        self,
        step: int,
        pending: dict[tuple[int, int], int],
        deadline: float | None,
    ) -> Done | Failed:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            msg: Done | Failed = self._results.get(timeout=remaining)
        except QueueTimeoutError:
            missing = ", ".join(
                f"group {g} of micro-batch {m} (worker {w})"
                for (m, g), w in sorted(pending.items())
            )
            raise QueueTimeoutError(
                f"step {step}: no result within {self._timeout} s for {missing}",
                hint="a grad_fn is stuck or far slower than expected; raise timeout",
            ) from None
        except QueueClosedError:
            raise LifecycleError(
                f"step {step}: the coordinator was stopped during the step"
            ) from None
        return msg

    def _fail(self, error: BaseException, worker: int | None) -> None:
        """Stop everything, then tell the callbacks; ``error`` is raised by the
        caller afterwards."""
        self._shutdown()
        for cb in self._callbacks:
            handler = getattr(cb, "on_error", None)
            if handler is None:
                continue
            try:
                handler(error, worker)
            except Exception as cb_error:  # never let it hide the real failure
                error.add_note(f"on_error callback {cb!r} raised {cb_error!r}")

    def _fire(self, event: str, *args: Any) -> None:
        for cb in self._callbacks:
            handler = getattr(cb, event, None)
            if handler is not None:
                handler(*args)

    # -------------------------------------------------------- statistics ----
    def stats(self) -> tuple[WorkerStats, ...]:
        """One snapshot per worker, in worker order."""
        return self._crew.stats()

    def total_stats(self) -> WorkerStats:
        """All workers' statistics merged."""
        return WorkerStats.total(self.stats())

    def reset_stats(self) -> None:
        """Zero every worker's statistics."""
        self._crew.reset_stats()


def resolve_backend(backend: Any) -> Any:
    """``backend`` (default: the registry's default) with the kernels a step needs."""
    if backend is None:
        from cllm_spec.registry import get_backend

        backend = get_backend()
    missing = [n for n in _REQUIRED_BACKEND if not callable(getattr(backend, n, None))]
    if missing:
        raise ConfigError(f"backend: lacks {missing}, needed by the coordinator")
    return backend


__all__ = [
    "Callbacks",
    "Coordinator",
    "GradFn",
    "OptimizerStep",
    "SplitFn",
    "StepResult",
]
