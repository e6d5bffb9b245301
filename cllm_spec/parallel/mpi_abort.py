"""How a failing rank of an :class:`~cllm_spec.parallel.mpi.MPIEngine` ends the
whole job, so that no other rank waits for it: a report on stderr naming the
rank, then ``MPI_Abort`` (:func:`report_and_abort`), and a ``sys.excepthook``
chained in front of the caller's that does the same for an exception raised
outside the engine's calls (:class:`AbortHook`). When the engine does this is
in "Failures never hang the job" of :mod:`cllm_spec.parallel.mpi`.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from types import TracebackType
from typing import Any

_ABORT_GRACE = 0.25  # seconds between writing a failure report and MPI_Abort


def abort_job(world: Any) -> None:
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


def report_and_abort(
    exc: BaseException, what: str, rank: int, size: int, world: Any
) -> None:
    """Write ``exc``'s traceback to stderr, naming the rank, and end the job."""
    report = "".join(traceback.format_exception(exc))
    sys.stderr.write(
        f"cllm mpi: rank {rank} of {size} failed in {what}; "
        f"calling MPI_Abort(1) to end every rank\n{report}"
    )
    sys.stderr.flush()
    abort_job(world)


class AbortHook:
    """A ``sys.excepthook`` that runs the previous one, then ends the job."""

    def __init__(self) -> None:
        self._hook: Any = None  # our excepthook while installed
        self._previous_hook: Any = None

    def install(self, rank: int, size: int, world: Any) -> None:
        previous = sys.excepthook

        def hook(
            tp: type[BaseException], value: BaseException, tb: TracebackType | None
        ) -> None:
            previous(tp, value, tb)
            sys.stderr.write(
                f"cllm mpi: rank {rank} of {size}: uncaught {tp.__name__}; calling "
                f"MPI_Abort(1) so the other ranks do not wait for this one\n"
            )
            abort_job(world)

        self._previous_hook, self._hook = previous, hook
        sys.excepthook = hook

    def remove(self) -> None:
        """Restore the previous hook, unless another replaced ours meanwhile."""
        if self._hook is not None and sys.excepthook is self._hook:
            sys.excepthook = self._previous_hook
        self._hook = self._previous_hook = None


__all__ = ["AbortHook", "abort_job", "report_and_abort"]
