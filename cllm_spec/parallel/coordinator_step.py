"""One step of the coordinator, planned and reduced: every micro-batch cut into
its 12 groups and routed to the workers (:func:`plan_step`), then the group
results, arriving in any order, reduced in the fixed order that makes any
number of workers give the same bits (:class:`StepReduction`). These are
steps 1, 2 and 4 of "One step" in :mod:`cllm_spec.parallel.coordinator`; no
thread is started or waited for here, the coordinator does that.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cllm_spec.parallel.allocation import N_GROUPS, Allocation
from cllm_spec.parallel.coordinator_types import SplitFn
from cllm_spec.parallel.reduction import GroupResult, finish_step, reduce_groups
from cllm_spec.parallel.split import split_groups
from cllm_spec.parallel.workers import Task

_NO_GRADS = np.empty(0)  # stands in for a buffer already reduced, so it can be freed


def plan_step(
    split_fn: SplitFn, allocation: Allocation, micro_batches: list[Any]
) -> tuple[list[list[Task]], int]:
    """Cut every micro-batch into groups and route them: per-worker task lists."""
    tasks: list[list[Task]] = [[] for _ in range(allocation.n_workers)]
    n_tasks = 0
    for m, batch in enumerate(micro_batches):
        parts = split_groups(split_fn, batch, m, N_GROUPS)
        for g, part in enumerate(parts):
            if part is not None:
                worker = allocation.group_to_worker[g]
                tasks[worker].append(Task(m, g, part))
                n_tasks += 1
    return tasks, n_tasks


class StepReduction:
    """The results of one step's ``tasks`` (:func:`plan_step`), each
    micro-batch reduced as soon as it is complete."""

    def __init__(self, backend: Any, tasks: list[list[Task]], n_micro: int) -> None:
        self._backend = backend
        self.pending: dict[tuple[int, int], int] = {}  # (micro, group) -> worker
        self._expected = [0] * n_micro
        for w, own in enumerate(tasks):
            for t in own:
                self.pending[(t.micro, t.group)] = w
                self._expected[t.micro] += 1
        self._arrived: list[dict[int, GroupResult]] = [{} for _ in range(n_micro)]
        self._micro_sums: list[tuple[int, np.ndarray]] = []
        self._summaries: list[GroupResult] = []
        self._last_micro = -1  # the micro-batch of the step's last result

    def add(self, r: GroupResult) -> bool:
        """Take one group result; True once it was the step's last."""
        del self.pending[(r.micro, r.group)]
        self._arrived[r.micro][r.group] = r
        if not self.pending:
            self._last_micro = r.micro
            return True  # finish() reduces the last micro-batch
        if len(self._arrived[r.micro]) == self._expected[r.micro]:
            self._reduce_micro(r.micro)
        return False

    def finish(self) -> tuple[np.ndarray, float, int]:
        """The step's gradient, mean loss and token count, once every result
        was added (:func:`~cllm_spec.parallel.reduction.finish_step`)."""
        self._reduce_micro(self._last_micro)
        self._micro_sums.sort(key=lambda pair: pair[0])
        self._summaries.sort(key=lambda x: (x.micro, x.group))
        return finish_step(
            self._backend, [s for _, s in self._micro_sums], self._summaries
        )

    def _reduce_micro(self, micro: int) -> None:
        """Reduce micro-batch ``micro``, complete now, into the micro-batch sums."""
        # Group order, not arrival order: this is what fixes the bits.
        ordered = [self._arrived[micro][g] for g in sorted(self._arrived[micro])]
        self._micro_sums.append((micro, reduce_groups(self._backend, ordered)))
        self._summaries.extend(x._replace(grads=_NO_GRADS) for x in ordered)
        self._arrived[micro] = {}  # drop the group buffers early


__all__ = ["StepReduction", "plan_step"]
