"""The group micro-batches of a step on the ranks of an
:class:`~cllm_spec.parallel.mpi.MPIEngine`: the 12-way cut of each micro-batch,
the ``(micro, group)`` pairs each rank computes (its groups of the allocation,
where not empty), this rank's results, and every rank's results put back in
``(micro, group)`` order, the order the reduction's bits depend on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cllm_spec.errors import ReplicaMismatchError
from cllm_spec.parallel.allocation import N_GROUPS, Allocation
from cllm_spec.parallel.coordinator import GradFn, SplitFn
from cllm_spec.parallel.reduction import (
    GroupResult,
    validate_grad_output,
    validate_many_output,
)
from cllm_spec.parallel.split import split_groups


class RankGroups:
    """The group work of rank ``rank`` under ``allocation``."""

    def __init__(
        self,
        allocation: Allocation,
        rank: int,
        grad_fn: GradFn,
        grad_many: Callable[[list[int], list[Any]], Sequence[Any]] | None,
        split_fn: SplitFn,
    ) -> None:
        self._allocation = allocation
        self._rank = rank
        self._grad_fn = grad_fn
        self._grad_many = grad_many
        self._split_fn = split_fn

    def split(self, m: int, batch: Any) -> Sequence[Any]:
        """The 12 group micro-batches of micro-batch ``m`` (validated as the
        coordinator does)."""
        return split_groups(self._split_fn, batch, m, N_GROUPS)

    def tasks(
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

    def compute_mine(self, parts: Sequence[Sequence[Any]]) -> list[GroupResult]:
        """This rank's groups, with ``grad_many`` one call per micro-batch."""
        tasks = self.tasks(parts)
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

    def collect(
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
            want = self.tasks(parts, rank)
            if got != want:
                raise ReplicaMismatchError(
                    f"step {step}: rank {rank} sent the results of {got}, "
                    f"expected {want}"
                )
        everything = [r for own in per_rank for r in own]
        return sorted(everything, key=lambda r: (r.micro, r.group))


__all__ = ["RankGroups"]
