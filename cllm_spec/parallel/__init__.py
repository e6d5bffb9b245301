"""Parallel training: worker threads on one machine (one coordinator), MPI
ranks past it, the same bits for any number of either.

- :mod:`~cllm_spec.parallel.allocation`: the 12 symmetry groups over N workers
  (ONE_TO_ONE when N >= 12, else ROUND_ROBIN);
- :mod:`~cllm_spec.parallel.split`: one batch -> 12 group micro-batches;
- :mod:`~cllm_spec.parallel.reduction`: the gradient contract and the fixed-order
  reduction that makes N workers give the bits of one;
- :mod:`~cllm_spec.parallel.coordinator`: the coordinator and its workers, with
  its parts ``coordinator_step`` (a step planned and reduced) and
  ``coordinator_types``;
- :mod:`~cllm_spec.parallel.lifecycle`, :mod:`~cllm_spec.parallel.messages`,
  :mod:`~cllm_spec.parallel.stats`: its state machine, control-message queue and
  per-worker statistics;
- :mod:`~cllm_spec.parallel.mpi`: the engine of one MPI rank, with its parts
  ``mpi_groups``, ``mpi_transport`` and ``mpi_abort``;
- :mod:`~cllm_spec.parallel.digests`: the weight and batch digests ranks compare.

Nothing here imports the model: a step is driven by a gradient function and an
optimizer function that the trainer supplies.
"""

from cllm_spec.parallel.allocation import (
    N_GROUPS,
    Allocation,
    Strategy,
    allocate_groups,
)
from cllm_spec.parallel.coordinator import Callbacks, Coordinator, StepResult
from cllm_spec.parallel.digests import weights_digest
from cllm_spec.parallel.lifecycle import TRANSITIONS, Lifecycle, LifecycleError, State
from cllm_spec.parallel.messages import MessageQueue, MessageQueueStats, Priority
from cllm_spec.parallel.mpi import MPIEngine
from cllm_spec.parallel.reduction import (
    GroupResult,
    finish_step,
    reduce_groups,
    validate_grad_output,
)
from cllm_spec.parallel.split import group_row_ranges, split_rows
from cllm_spec.parallel.stats import WorkerStats

__all__ = [
    "N_GROUPS",
    "TRANSITIONS",
    "Allocation",
    "Callbacks",
    "Coordinator",
    "GroupResult",
    "Lifecycle",
    "MPIEngine",
    "LifecycleError",
    "MessageQueue",
    "MessageQueueStats",
    "Priority",
    "State",
    "StepResult",
    "Strategy",
    "WorkerStats",
    "allocate_groups",
    "finish_step",
    "group_row_ranges",
    "reduce_groups",
    "split_rows",
    "validate_grad_output",
    "weights_digest",
]
