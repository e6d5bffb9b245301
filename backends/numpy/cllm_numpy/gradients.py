"""Gradient-buffer operations on NumPy: the spec is :mod:`cllm_spec.gradients`."""

from __future__ import annotations

import math

import numpy as np

from cllm_spec.gradients import (
    CLIP_NORM_EPS,
    validate_buffers,
    validate_factor,
    validate_flat,
    validate_norm_type,
    validate_positive,
    validate_same_flat,
)
from cllm_spec.protocols import GradStats


def _l2_norm(g: np.ndarray, amax: float) -> float:
    """sqrt(sum g^2), with ``amax = max|g|`` already known.

    Scaling by the power of two 2^-k nearest above amax is exact, keeps every
    square in [0, 1] (no overflow, no flush to zero of the large terms) and the
    float64 sum of float32 squares rounds only in the additions.
    """
    if not math.isfinite(amax) or amax == 0.0:
        return amax  # NaN, inf or an all-zero buffer: nothing to sum
    _, k = math.frexp(amax)
    scaled = np.ldexp(g.astype(np.float64), -k)  # (P,), |scaled| < 1
    root = math.sqrt(float(np.sum(scaled * scaled)))
    try:
        return math.ldexp(root, k)
    except OverflowError:  # the norm itself exceeds the float64 range
        return math.inf


def _norm(g: np.ndarray, norm_type: float) -> float:
    amax = float(np.max(np.abs(g)))  # NaN if any element is NaN
    return amax if norm_type == math.inf else _l2_norm(g, amax)


def grad_global_norm(g: np.ndarray, norm_type: float = 2.0) -> float:
    """``||g||_2`` (float64 accumulation, power-of-two scaling) or ``max|g|``."""
    g = validate_flat("g", g)
    return _norm(g, validate_norm_type(norm_type))


def clip_grad_norm(
    g: np.ndarray, max_norm: float, norm_type: float = 2.0
) -> tuple[np.ndarray, float]:
    """``g * min(max_norm / (||g|| + 1e-6), 1)`` and the pre-clip norm."""
    g = validate_flat("g", g)
    max_norm = validate_positive("max_norm", max_norm)
    total = _norm(g, validate_norm_type(norm_type))
    coef = float(np.minimum(max_norm / (total + CLIP_NORM_EPS), 1.0))  # NaN stays
    with np.errstate(invalid="ignore"):  # inf * 0 when the norm is inf
        return g * g.dtype.type(coef), total


def clip_grad_value(g: np.ndarray, clip_value: float) -> np.ndarray:
    """``clip(g, -c, c)``; NaN stays NaN."""
    g = validate_flat("g", g)
    c = g.dtype.type(validate_positive("clip_value", clip_value))
    return np.clip(g, -c, c)


def grad_stats(g: np.ndarray) -> GradStats:
    """Norm, min, max, mean over all elements, and the count of non-finite ones."""
    g = validate_flat("g", g)
    amax = float(np.max(np.abs(g)))
    nonfinite = g.size - int(np.count_nonzero(np.isfinite(g)))
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf, huge sums
        mean = float(np.sum(g, dtype=np.float64) / g.size)
    return GradStats(
        norm=_l2_norm(g, amax),
        min=float(np.min(g)),
        max=float(np.max(g)),
        mean=mean,
        nonfinite=nonfinite,
    )


def grad_accumulate(acc: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``acc + g`` as a new array."""
    acc, g = validate_same_flat(("acc", "g"), (acc, g))
    with np.errstate(invalid="ignore", over="ignore"):
        return acc + g


def grad_scale(g: np.ndarray, factor: float) -> np.ndarray:
    """``g * factor`` with factor rounded to g's dtype."""
    g = validate_flat("g", g)
    f = g.dtype.type(validate_factor(factor))
    with np.errstate(invalid="ignore", over="ignore"):
        return g * f


def grad_tree_reduce(buffers: list[np.ndarray]) -> np.ndarray:
    """Sum K buffers by the fixed pairwise tree of the spec (order depends on K)."""
    level = validate_buffers(buffers)
    if len(level) == 1:
        return level[0].copy()
    with np.errstate(invalid="ignore", over="ignore"):
        while len(level) > 1:  # log2(K) levels; each level is one vectorized add
            k = len(level)
            left = np.stack(level[0 : k - 1 : 2])  # (K // 2, P): buffers 0, 2, 4 ...
            right = np.stack(level[1:k:2])  # (K // 2, P): buffers 1, 3, 5 ...
            sums = list(left + right)
            level = sums + [level[-1]] if k % 2 else sums
    return level[0]


__all__ = [
    "clip_grad_norm",
    "clip_grad_value",
    "grad_accumulate",
    "grad_global_norm",
    "grad_scale",
    "grad_stats",
    "grad_tree_reduce",
]
