"""Gradient-buffer operations on the C kernels of ``csrc/gradients.c``.

The math and error contract are in :mod:`cllm_spec.gradients`. The L2 norm is
the reference's: scale by the power of two 2^-k just above max|g| (exact), sum
the squares in float64, take the root and scale back.
"""

from __future__ import annotations

import math

import numpy as np

from cllm_c._lib import F32, F64, arr, check, empty, ffi, kernel, lib, ptr
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


def _summary(g: np.ndarray) -> object:
    out = ffi.new("cllm_grad_summary *")
    check(kernel("cllm_grad_summarize", g.dtype)(ptr(g), g.size, out), "grad summary")
    return out


def _l2_norm(g: np.ndarray, amax: float) -> float:
    if not math.isfinite(amax) or amax == 0.0:
        return amax  # NaN, inf or an all-zero buffer: nothing to sum
    _, k = math.frexp(amax)
    total = ffi.new("double *")
    status = kernel("cllm_grad_sumsq_scaled", g.dtype)(ptr(g), g.size, k, total)
    check(status, "grad norm")
    try:
        return math.ldexp(math.sqrt(total[0]), k)
    except OverflowError:  # the norm itself exceeds the float64 range
        return math.inf


def _norm(g: np.ndarray, norm_type: float) -> float:
    if norm_type == 2.0 and g.dtype == F32:
        return _f32_l2_norm(g)
    amax = float(_summary(g).amax)
    return amax if norm_type == math.inf else _l2_norm(g, amax)


def _f32_l2_norm(g: np.ndarray) -> float:
    """The L2 norm of float32 ``g`` in one pass, with the bits of _l2_norm.

    A float32's square is exact in float64 and at most ~1.2e77, so no term
    over- or underflows and scaling every term by 2^-k only scales each
    partial sum exactly: the scaled sum is the unscaled one times 2^-2k, bit
    for bit, and so is its root. Skipping the scale skips the pass that finds
    max|g|. NaN and inf come through the sum as NaN and inf, as there.
    """
    total = ffi.new("double *")
    check(lib.cllm_grad_sumsq_scaled(ptr(g), g.size, 0, total), "grad norm")
    return math.sqrt(total[0])


def _unary(name: str, g: np.ndarray, value: float) -> np.ndarray:
    out = empty(g.shape, dtype=g.dtype)
    check(kernel(name, g.dtype)(ptr(g), value, ptr(out), g.size), name)
    return out


def grad_global_norm(g: np.ndarray, norm_type: float = 2.0) -> float:
    """``||g||_2`` (float64 accumulation, power-of-two scaling) or ``max|g|``."""
    g = arr("g", validate_flat("g", g))
    return _norm(g, validate_norm_type(norm_type))


def clip_grad_norm(
    g: np.ndarray, max_norm: float, norm_type: float = 2.0
) -> tuple[np.ndarray, float]:
    """``g * min(max_norm / (||g|| + 1e-6), 1)`` and the pre-clip norm."""
    g = arr("g", validate_flat("g", g))
    max_norm = validate_positive("max_norm", max_norm)
    total = _norm(g, validate_norm_type(norm_type))
    coef = float(np.minimum(max_norm / (total + CLIP_NORM_EPS), 1.0))  # NaN stays
    return _unary("cllm_vec_scale", g, coef), total


def clip_grad_value(g: np.ndarray, clip_value: float) -> np.ndarray:
    """``clip(g, -c, c)``; NaN stays NaN."""
    g = arr("g", validate_flat("g", g))
    c = validate_positive("clip_value", clip_value)
    return _unary("cllm_vec_clip", g, c)


def grad_stats(g: np.ndarray) -> GradStats:
    """Norm, min, max, mean over all elements, and the count of non-finite ones."""
    g = arr("g", validate_flat("g", g))
    s = _summary(g)
    return GradStats(
        norm=_l2_norm(g, float(s.amax)),
        min=float(s.min),
        max=float(s.max),
        mean=float(s.sum) / g.size,
        nonfinite=int(s.nonfinite),
    )


def grad_accumulate(acc: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``acc + g`` as a new array."""
    acc, g = validate_same_flat(("acc", "g"), (acc, g))
    a, b = arr("acc", acc), arr("g", g)
    out = empty(a.shape, dtype=a.dtype)
    status = kernel("cllm_vec_add", a.dtype)(ptr(a), ptr(b), ptr(out), a.size)
    check(status, "grad_accumulate")
    return out


def grad_scale(g: np.ndarray, factor: float) -> np.ndarray:
    """``g * factor`` with factor rounded to g's dtype."""
    g = arr("g", validate_flat("g", g))
    return _unary("cllm_vec_scale", g, validate_factor(factor))


def grad_tree_reduce(buffers: list[np.ndarray]) -> np.ndarray:
    """Sum K buffers by the fixed pairwise tree of the spec (order depends on K)."""
    level = [arr(f"buffers[{i}]", b) for i, b in enumerate(validate_buffers(buffers))]
    dt = level[0].dtype
    out = empty(level[0].shape, dtype=dt)
    pointers = ffi.new(
        "double *[]" if dt == F64 else "float *[]", [ptr(b) for b in level]
    )
    status = kernel("cllm_tree_reduce", dt)(
        pointers, len(level), level[0].size, ptr(out)
    )
    check(status, "grad_tree_reduce")
    return out
