"""Per-worker statistics: work done and where the time went.

A :class:`WorkerStats` is an immutable record; the coordinator keeps one per
worker and replaces it after every group the worker computes. Fields:

- ``batches``: group micro-batches computed (successful ``grad_fn`` calls);
- ``tokens``: the sum of the ``n_tokens`` those calls returned;
- ``busy_s``: seconds spent inside ``grad_fn`` (and checking its result),
  failed calls included;
- ``idle_s``: seconds spent waiting for work (the wait that is still in progress
  when a snapshot is taken is not yet counted).

``merge`` adds two records field by field (totals over workers, or over runs);
``WorkerStats()`` is the zero record, so ``reset`` is "replace with the zero
record" (the coordinator's ``reset_stats``). ``utilization = busy / (busy +
idle)`` (0.0 when both are 0).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerStats:
    batches: int = 0
    tokens: int = 0
    busy_s: float = 0.0
    idle_s: float = 0.0

    def merge(self, other: WorkerStats) -> WorkerStats:
        """Field-wise sum."""
        return WorkerStats(
            self.batches + other.batches,
            self.tokens + other.tokens,
            self.busy_s + other.busy_s,
            self.idle_s + other.idle_s,
        )

    def record(
        self,
        *,
        batches: int = 0,
        tokens: int = 0,
        busy_s: float = 0.0,
        idle_s: float = 0.0,
    ) -> WorkerStats:
        """This record plus one more observation."""
        return self.merge(WorkerStats(batches, tokens, busy_s, idle_s))

    @property
    def utilization(self) -> float:
        total = self.busy_s + self.idle_s
        return self.busy_s / total if total > 0 else 0.0

    @staticmethod
    def total(records: Iterable[WorkerStats]) -> WorkerStats:
        """The merge of all ``records`` (the zero record if there are none)."""
        out = WorkerStats()
        for r in records:
            out = out.merge(r)
        return out


__all__ = ["WorkerStats"]
