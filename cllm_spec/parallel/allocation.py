"""Which worker computes which of the 12 symmetry groups.

Every global batch is cut into ``N_GROUPS = 12`` group micro-batches (see
:mod:`cllm_spec.parallel.split`); an :class:`Allocation` says which of the
``n`` workers computes each group. It is a pure function of ``n``:

- ``n >= 12``: ``ONE_TO_ONE``. Worker ``t < 12`` owns group ``t``; workers
  ``12 .. n-1`` own no group. They are still started by the coordinator, receive
  no work, stay idle and report zero batches in their statistics: more than 12
  workers never makes a step faster, it only costs idle threads.
- ``n < 12``: ``ROUND_ROBIN``. Worker ``t`` owns groups ``t, t + n, t + 2n, ...``
  (all ``g`` with ``g mod n == t``), so it owns ``floor(12 / n)`` groups, plus one
  more if ``t < 12 mod n``.

Examples (``groups[t]`` per worker)::

    n = 1   ((0, 1, 2, ..., 11),)
    n = 2   ((0, 2, 4, 6, 8, 10), (1, 3, 5, 7, 9, 11))
    n = 5   ((0, 5, 10), (1, 6, 11), (2, 7), (3, 8), (4, 9))
    n = 13  ((0,), (1,), ..., (11,), ())

Invariant (checked by :meth:`Allocation.validate` whenever an Allocation is
built, so an invalid one cannot exist): every group ``0 .. 11`` is owned by
exactly one worker, ``group_to_worker[g] == t`` exactly when ``g in groups[t]``,
and each worker's groups are sorted.

The allocation only routes work; it never changes results: the coordinator
reduces the 12 group gradients in group order whatever worker computed them, so
a step's bits do not depend on ``n``.

``load_balance`` is ``min / max`` of the group counts over the workers that own
at least one group (1.0 for ``ONE_TO_ONE``; ``2/3`` for ``n = 5``).

Errors: ``n_workers`` not an int >= 1 is a ``ConfigError``; so is a worker id or
group id out of range in a query, and an Allocation built by hand that breaks
the invariant.

Relation to the original: same two strategies and the same tables as its
``create_thread_allocation``; its ``GROUPED``, ``PRIORITY_BASED`` and
``DYNAMIC_LOAD_BALANCED`` were declared but never implemented, and are left out.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cllm_spec.checks import expect_positive_int
from cllm_spec.errors import ConfigError

N_GROUPS = 12


class Strategy(enum.Enum):
    """How groups are spread over workers."""

    ONE_TO_ONE = "one_to_one"  # n >= 12: worker t owns group t
    ROUND_ROBIN = "round_robin"  # n < 12: worker t owns g with g mod n == t


@dataclass(frozen=True)
class Allocation:
    """The group table of ``n_workers`` workers; validated when built."""

    n_workers: int
    strategy: Strategy
    groups: tuple[tuple[int, ...], ...]  # groups[t]: sorted groups of worker t
    group_to_worker: tuple[int, ...]  # group_to_worker[g]: the owner of group g

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Every group owned by exactly one worker, and both tables agree."""
        if len(self.groups) != self.n_workers:
            raise ConfigError(
                f"allocation: {len(self.groups)} group lists for "
                f"{self.n_workers} workers"
            )
        if len(self.group_to_worker) != N_GROUPS:
            raise ConfigError(
                f"allocation: group_to_worker has {len(self.group_to_worker)} "
                f"entries, expected {N_GROUPS}"
            )
        owners: dict[int, int] = {}
        for worker, owned in enumerate(self.groups):
            if list(owned) != sorted(set(owned)):
                raise ConfigError(
                    f"allocation: worker {worker} groups {owned} unsorted"
                )
            for g in owned:
                if not 0 <= g < N_GROUPS:
                    raise ConfigError(f"allocation: worker {worker} owns group {g}")
                if g in owners:
                    raise ConfigError(
                        f"allocation: group {g} owned by workers {owners[g]} "
                        f"and {worker}"
                    )
                owners[g] = worker
        missing = [g for g in range(N_GROUPS) if g not in owners]
        if missing:
            raise ConfigError(f"allocation: groups {missing} have no worker")
        table = tuple(owners[g] for g in range(N_GROUPS))
        if table != tuple(self.group_to_worker):
            raise ConfigError(
                f"allocation: group_to_worker {self.group_to_worker} disagrees "
                f"with the group lists {table}"
            )

    def groups_of(self, worker: int) -> tuple[int, ...]:
        """The groups of ``worker`` (empty for an idle worker)."""
        return self.groups[self._worker_id(worker)]

    def worker_of(self, group: int) -> int:
        """The worker that owns ``group``."""
        if isinstance(group, bool) or not isinstance(group, int):
            raise ConfigError(f"group: expected an int, got {type(group).__name__}")
        if not 0 <= group < N_GROUPS:
            raise ConfigError(f"group: expected 0 <= group < {N_GROUPS}, got {group}")
        return self.group_to_worker[group]

    @property
    def active_workers(self) -> tuple[int, ...]:
        """Workers that own at least one group, in order."""
        return tuple(t for t, owned in enumerate(self.groups) if owned)

    @property
    def idle_workers(self) -> tuple[int, ...]:
        """Workers that own no group (only with ``n > 12``)."""
        return tuple(t for t, owned in enumerate(self.groups) if not owned)

    @property
    def load_balance(self) -> float:
        """``min / max`` group count over the active workers."""
        counts = [len(self.groups[t]) for t in self.active_workers]
        return min(counts) / max(counts)

    def _worker_id(self, worker: object) -> int:
        if isinstance(worker, bool) or not isinstance(worker, int):
            raise ConfigError(f"worker: expected an int, got {type(worker).__name__}")
        if not 0 <= worker < self.n_workers:
            raise ConfigError(
                f"worker: expected 0 <= worker < {self.n_workers}, got {worker}"
            )
        return worker


def allocate_groups(n_workers: int) -> Allocation:
    """The allocation of the 12 groups to ``n_workers`` workers (see module doc)."""
    n = expect_positive_int("n_workers", n_workers)
    groups: tuple[tuple[int, ...], ...]
    if n >= N_GROUPS:
        strategy = Strategy.ONE_TO_ONE
        groups = tuple((t,) if t < N_GROUPS else () for t in range(n))
    else:
        strategy = Strategy.ROUND_ROBIN
        groups = tuple(tuple(range(t, N_GROUPS, n)) for t in range(n))
    group_to_worker = tuple(g if n >= N_GROUPS else g % n for g in range(N_GROUPS))
    return Allocation(n, strategy, groups, group_to_worker)


__all__ = ["N_GROUPS", "Allocation", "Strategy", "allocate_groups"]
