"""The types a trainer and the coordinator exchange: the functions a trainer
passes in (:data:`GradFn`, :data:`OptimizerStep`, :data:`SplitFn`), what one
optimizer step did (:class:`StepResult`) and the callback events
(:class:`Callbacks`). The MPI engine (:mod:`cllm_spec.parallel.mpi`) takes the
same functions and returns the same StepResult, so a trainer can drive either;
the contracts themselves are in :mod:`cllm_spec.parallel.coordinator`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

GradFn = Callable[[int, Any], tuple[np.ndarray, float, int]]
OptimizerStep = Callable[[np.ndarray, float], Any]
SplitFn = Callable[[Any, int], Sequence[Any]]


@dataclass(frozen=True)
class StepResult:
    """What one :meth:`~cllm_spec.parallel.coordinator.Coordinator.run_step` did."""

    step: int  # 0-based index of this optimizer step
    loss: float  # mean loss per counted token over the whole step
    tokens: int  # counted tokens in the step (N)
    micro_batches: int  # A, the accumulation count
    groups: int  # non-empty group micro-batches computed
    seconds: float  # wall time of the step
    optimizer_result: Any  # whatever optimizer_step returned


class Callbacks:
    """No-op base for callbacks; override the events you need."""

    def on_epoch_start(self, epoch: int) -> None:
        """:meth:`~cllm_spec.parallel.coordinator.Coordinator.start_epoch` was
        called."""

    def on_epoch_end(self, epoch: int) -> None:
        """:meth:`~cllm_spec.parallel.coordinator.Coordinator.end_epoch` was
        called."""

    def on_step_start(self, step: int) -> None:
        """Step ``step`` is about to hand out its work."""

    def on_step_end(self, step: int, result: StepResult) -> None:
        """Step ``step`` took its optimizer step."""

    def on_checkpoint(self, step: int, info: Any) -> None:
        """A checkpoint was saved after ``step`` optimizer steps."""

    def on_error(self, error: BaseException, worker: int | None) -> None:
        """The run stopped because of ``error`` (raised by ``worker``, if any)."""


__all__ = ["Callbacks", "GradFn", "OptimizerStep", "SplitFn", "StepResult"]
