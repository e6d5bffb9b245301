"""Cutting one global batch into the 12 group micro-batches.

The cut depends on the batch alone, never on the number of workers: that is
what makes a step's result independent of how many workers compute it.

Row ranges
----------
A batch of ``B`` rows is cut into ``n_groups`` contiguous row ranges, the first
``r = B mod n_groups`` of them one row longer (``numpy.array_split``'s rule)::

    q, r     = divmod(B, n_groups)
    start(g) = g * q + min(g, r)                      g = 0 .. n_groups
    group g  = rows [start(g), start(g + 1))          q + 1 rows if g < r, else q

so every row belongs to exactly one group, in order. ``B`` need not be a
multiple of 12 (the default ``batch_size`` is 16): with ``B = 16`` groups 0..3
get 2 rows and groups 4..11 one; with ``B < 12`` groups ``B .. 11`` get no rows.
An empty group has no micro-batch (``None``): no worker is asked to compute it
and it contributes nothing to the step.

What a batch is
---------------
:func:`split_rows` accepts an ndarray ``(B, ...)`` or a tuple of ndarrays that
share the leading dimension ``B`` (a :class:`~cllm_spec.protocols.Batch`, any
NamedTuple, or a plain tuple); a NamedTuple comes back as the same type. The
parts are views of the input rows (no copy): a ``grad_fn`` must not write into
its micro-batch.

Errors: a batch that is neither of those, or a tuple member that is not an
ndarray, is a ``DTypeError``; a 0-d array or members with different ``B`` is a
``ShapeError``; ``B == 0`` or an empty tuple is an ``EmptyInputError``;
``n_groups`` not an int >= 1 is a ``ConfigError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cllm_spec.checks import expect_positive_int
from cllm_spec.errors import DTypeError, EmptyInputError, ShapeError


def group_row_ranges(n_rows: int, n_groups: int) -> list[tuple[int, int]]:
    """``[(start(g), start(g + 1)) for g in range(n_groups)]`` (see module doc)."""
    b = expect_positive_int("n_rows", n_rows)
    k = expect_positive_int("n_groups", n_groups)
    q, r = divmod(b, k)
    starts = [g * q + min(g, r) for g in range(k + 1)]
    return list(zip(starts[:-1], starts[1:], strict=True))


def _leading_rows(batch: object) -> int:
    """``B`` of an ndarray or of a tuple of ndarrays (validated)."""
    if isinstance(batch, np.ndarray):
        arrays: tuple[object, ...] = (batch,)
    elif isinstance(batch, tuple):
        if not batch:
            raise EmptyInputError("batch: an empty tuple has no rows")
        arrays = batch
    else:
        raise DTypeError(
            f"batch: expected an ndarray or a tuple of ndarrays, got "
            f"{type(batch).__name__}",
            hint="pass split_fn to the coordinator for other batch types",
        )
    rows: set[int] = set()
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray):
            raise DTypeError(f"batch[{i}]: expected an ndarray, got {type(a).__name__}")
        if a.ndim == 0:
            raise ShapeError(f"batch[{i}]: expected rank >= 1, got a 0-d array")
        rows.add(int(a.shape[0]))
    if len(rows) != 1:
        shapes = [a.shape for a in arrays if isinstance(a, np.ndarray)]
        raise ShapeError(f"batch: members must share the leading size, got {shapes}")
    b = rows.pop()
    if b == 0:
        raise EmptyInputError("batch: B = 0 rows")
    return b


def _take(batch: Any, lo: int, hi: int) -> Any:
    if isinstance(batch, np.ndarray):
        return batch[lo:hi]
    parts = [a[lo:hi] for a in batch]
    # A NamedTuple keeps its type (and so its field names); a plain tuple stays one.
    return type(batch)._make(parts) if hasattr(batch, "_make") else tuple(parts)


def split_rows(batch: Any, n_groups: int) -> list[Any | None]:
    """The ``n_groups`` row-range micro-batches of ``batch``; ``None`` if empty."""
    k = expect_positive_int("n_groups", n_groups)
    b = _leading_rows(batch)
    return [
        _take(batch, lo, hi) if hi > lo else None for lo, hi in group_row_ranges(b, k)
    ]


def split_groups(split_fn: Any, batch: Any, m: int, n_groups: int) -> Sequence[Any]:
    """``split_fn(batch, n_groups)``, the group micro-batches of micro-batch
    ``m``, checked as every engine relies on them: a list or tuple of
    ``n_groups`` (ShapeError) that are not all empty (EmptyInputError)."""
    parts = split_fn(batch, n_groups)
    if not isinstance(parts, list | tuple) or len(parts) != n_groups:
        raise ShapeError(
            f"split_fn: expected {n_groups} group micro-batches for "
            f"micro-batch {m}, got {type(parts).__name__}"
            + (f" of length {len(parts)}" if hasattr(parts, "__len__") else "")
        )
    if all(p is None for p in parts):
        raise EmptyInputError(f"micro-batch {m}: every group is empty")
    return parts


__all__ = ["group_row_ranges", "split_groups", "split_rows"]
