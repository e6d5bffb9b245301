"""Combining group gradients into one step: a fixed order, so fixed bits.

The contract of a gradient function
-----------------------------------
``grad_fn(group, micro_batch) -> (grads, loss_sum, n_tokens)`` returns, for the
micro-batch of one group:

- ``grads: (P,) float32|float64``, the gradient of the **sum** of the per-token
  losses over the group's counted tokens, as a new array the caller may keep;
- ``loss_sum``, that sum (a real number);
- ``n_tokens``, the number of counted tokens (an int >= 0).

Gradient values may be non-finite: they are passed on unchanged (the
optimizer function decides, e.g. with the backend's ``grad_stats``).

A model whose loss is a mean over its counted tokens (``cllm_spec.model``)
returns the gradient of its summed loss (``loss_reduction="sum"``); a group
whose tokens are all ignored returns zeros, 0.0 and 0 (its mean is 0/0).

One step
--------
A step has ``A >= 1`` micro-batches (gradient accumulation), each cut into the
12 groups; ``S`` is the set of (micro-batch ``m``, group ``g``) pairs whose
micro-batch is not empty. With ``tree`` the backend's ``grad_tree_reduce`` (a
pairwise tree whose shape depends only on the number of buffers)::

    G_m   = tree([grads(m, g) for g in groups of micro-batch m, in group order])
    G     = tree([G_0, G_1, ..., G_{A-1}])
    N     = sum_{(m,g) in S} n_tokens(m, g)
    grad  = grad_scale(G, 1 / N)          (1/N rounded to the buffer's dtype)
    loss  = fsum_{(m,g) in S} loss_sum(m, g) / N     (a Python float)

so ``loss`` is the mean per-token loss of the whole step, exactly what one
forward over all ``A`` micro-batches would average (every token weighs the same,
however the tokens fall into groups), and ``grad`` is its gradient. Nothing in
the formula names a worker, and the order of every addition is fixed by ``A``
and the group sizes, so 1, 2, 3 or 12 workers give the same bits. ``N == 0`` (no
counted token in the whole step) has no mean: an ``EmptyInputError``.

Errors (checked where the value is produced, so a bad result names its group):
``grads`` not a float ndarray, ``loss_sum`` not a real number, ``n_tokens`` not an
int, or a result that is not a 3-tuple: ``DTypeError``; ``grads`` not rank 1:
``ShapeError``; ``P == 0``: ``EmptyInputError``; ``n_tokens < 0``:
``ConfigError``; groups whose ``P`` or dtype differ: ``ShapeError`` or
``DTypeError`` naming them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from cllm_spec.errors import ConfigError, DTypeError, EmptyInputError, ShapeError
from cllm_spec.gradients import validate_flat, validate_same_flat


class GroupResult(NamedTuple):
    """What one group of one micro-batch contributed to a step."""

    micro: int  # index of the micro-batch within the step
    group: int  # symmetry group 0 .. 11
    grads: np.ndarray  # (P,) gradient of the summed loss
    loss_sum: float
    n_tokens: int


def validate_grad_output(out: object, where: str) -> tuple[np.ndarray, float, int]:
    """Check one ``grad_fn`` return value; ``where`` names it in messages."""
    if not isinstance(out, tuple) or len(out) != 3:
        raise DTypeError(
            f"{where}: expected (grads, loss_sum, n_tokens), got {type(out).__name__}"
        )
    grads, loss_sum, n_tokens = out
    grads = validate_flat(f"{where} grads", grads)
    if isinstance(loss_sum, bool) or not isinstance(
        loss_sum, int | float | np.integer | np.floating
    ):
        raise DTypeError(
            f"{where}: loss_sum must be a real number, got {type(loss_sum).__name__}"
        )
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int | np.integer):
        raise DTypeError(
            f"{where}: n_tokens must be an int, got {type(n_tokens).__name__}"
        )
    if n_tokens < 0:
        raise ConfigError(f"{where}: n_tokens must be >= 0, got {n_tokens}")
    return grads, float(loss_sum), int(n_tokens)


def validate_many_output(
    outs: object, micro: int, groups: Sequence[int]
) -> list[GroupResult]:
    """Check a ``grad_many(groups, batches)`` return value: one ``grad_fn``
    result per group, in order; as the groups' :class:`GroupResult`."""
    if not isinstance(outs, list | tuple) or len(outs) != len(groups):
        got = len(outs) if isinstance(outs, list | tuple) else type(outs).__name__
        raise ShapeError(f"grad_many: {got} results for {len(groups)} groups")
    return [
        GroupResult(micro, g, *validate_grad_output(out, f"grad_many(group {g})"))
        for g, out in zip(groups, outs, strict=True)
    ]


def reduce_groups(backend: Any, results: Sequence[GroupResult]) -> np.ndarray:
    """``G_m``: the tree sum of one micro-batch's group gradients, in group order.

    ``results`` must be that order already (strictly increasing groups): the
    order is part of the result's bits, so it is checked rather than trusted.
    """
    groups = [r.group for r in results]
    if not groups or groups != sorted(set(groups)):
        raise ConfigError(f"reduce_groups: groups must be increasing, got {groups}")
    names = [f"group {r.group} grads" for r in results]
    buffers = validate_same_flat(names, [r.grads for r in results])
    return np.asarray(backend.grad_tree_reduce(buffers))


def finish_step(
    backend: Any, micro_sums: Sequence[np.ndarray], results: Sequence[GroupResult]
) -> tuple[np.ndarray, float, int]:
    """``(grad, loss, N)`` of a step from its ``G_m`` and all its group results.

    ``results`` in (micro-batch, group) order; the loss sum uses ``math.fsum``,
    which is correctly rounded and so independent of order anyway.
    """
    n_tokens = sum(r.n_tokens for r in results)
    if n_tokens == 0:
        raise EmptyInputError(
            "step: no counted token in any group, so the mean loss is undefined",
            hint="check the masks / ignore_index of this step's batches",
        )
    names = [f"micro-batch {m} grads" for m in range(len(micro_sums))]
    validate_same_flat(names, micro_sums)
    total = backend.grad_tree_reduce(list(micro_sums))
    grad = np.asarray(backend.grad_scale(total, 1.0 / n_tokens))
    loss = math.fsum(r.loss_sum for r in results) / n_tokens
    return grad, loss, n_tokens


__all__ = [
    "GroupResult",
    "finish_step",
    "reduce_groups",
    "validate_grad_output",
    "validate_many_output",
]
