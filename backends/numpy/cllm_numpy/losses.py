"""Losses on NumPy: the math, shapes and errors are in :mod:`cllm_spec.losses`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cllm_spec.losses import (
    DEFAULT_HUBER_DELTA,
    DEFAULT_IGNORE_INDEX,
    validate_cross_entropy,
    validate_cross_entropy_backward,
    validate_huber_delta,
    validate_regression,
    validate_regression_backward,
    validate_softmax,
    validate_softmax_backward,
)
from cllm_spec.protocols import (
    CrossEntropyCache,
    LogSoftmaxCache,
    Reduction,
    RegressionLossCache,
    SoftmaxCache,
)


# ------------------------------------------------------- softmax family ----
def _shifted(x: np.ndarray) -> np.ndarray:
    """``x - max(x)`` over the last axis: every exponent is <= 0, so exp cannot
    overflow. A row with NaN or +inf turns to NaN here, as in PyTorch."""
    with np.errstate(invalid="ignore"):
        return x - x.max(axis=-1, keepdims=True)  # (..., V)


def softmax_forward(x: np.ndarray) -> tuple[np.ndarray, SoftmaxCache]:
    """``y = exp(x - m) / sum exp(x - m)`` over the last axis."""
    x = validate_softmax(x)
    e = np.exp(_shifted(x))
    y = e / e.sum(axis=-1, keepdims=True)  # (..., V)
    return y, SoftmaxCache(y)


def softmax_backward(dy: np.ndarray, cache: SoftmaxCache) -> np.ndarray:
    """``dx = y * (dy - sum(dy * y))``."""
    dy = validate_softmax_backward(dy, cache, SoftmaxCache)
    y = cache.y
    return y * (dy - np.sum(dy * y, axis=-1, keepdims=True))  # (..., V)


def log_softmax_forward(x: np.ndarray) -> tuple[np.ndarray, LogSoftmaxCache]:
    """``y = (x - m) - log sum exp(x - m)`` over the last axis."""
    x = validate_softmax(x)
    z = _shifted(x)
    y = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))  # (..., V)
    return y, LogSoftmaxCache(y)


def log_softmax_backward(dy: np.ndarray, cache: LogSoftmaxCache) -> np.ndarray:
    """``dx = dy - exp(y) * sum(dy)``."""
    dy = validate_softmax_backward(dy, cache, LogSoftmaxCache)
    return dy - np.exp(cache.y) * np.sum(dy, axis=-1, keepdims=True)  # (..., V)


# --------------------------------------------------------- cross-entropy ----
def _reduce(per_item: np.ndarray, reduction: str, count: int) -> np.ndarray:
    """none: the array; sum: 0-d sum; mean: 0-d sum / count (NaN when count is 0)."""
    if reduction == "none":
        return per_item
    total = per_item.sum(dtype=per_item.dtype)
    if reduction == "sum":
        return np.asarray(total, dtype=per_item.dtype)
    if count == 0:  # every row ignored: PyTorch's 0/0, without the warning
        return np.asarray(np.nan, dtype=per_item.dtype)
    return np.asarray(total / count, dtype=per_item.dtype)


def cross_entropy_forward(
    logits: np.ndarray,
    targets: np.ndarray,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
) -> tuple[np.ndarray, CrossEntropyCache]:
    """Label-smoothed cross-entropy of ``logits: (N, V)`` against ``targets: (N,)``."""
    logits, targets, ignore, eps, red = validate_cross_entropy(
        logits, targets, ignore_index, label_smoothing, reduction
    )
    n, v = logits.shape
    dtype = logits.dtype
    m = logits.max(axis=1, keepdims=True)  # (N, 1)
    z = logits - m  # (N, V), max entry exactly 0
    e = np.exp(z)  # (N, V)
    s = e.sum(axis=1, keepdims=True)  # (N, 1), >= 1
    lse = np.log(s)[:, 0]  # (N,), >= 0 because s >= 1
    kept = targets != ignore  # (N,)
    safe = np.where(kept, targets, 0)  # any valid index for ignored rows
    rows = np.arange(n)
    # lse - z_c >= 0 term by term (z_c <= 0 <= lse): the loss cannot go negative.
    nll = lse - z[rows, safe]  # (N,)
    per_row = nll if eps == 0.0 else (1.0 - eps) * nll + eps * (lse - z.mean(axis=1))
    per_row = np.where(kept, per_row, dtype.type(0))  # (N,)
    count = int(np.count_nonzero(kept))
    if red == "mean":
        scale = dtype.type(0) if count == 0 else dtype.type(1.0 / count)
    else:
        scale = dtype.type(1)
    weight = np.where(kept, scale, dtype.type(0)).astype(dtype)  # (N,)
    probs = e / s  # (N, V)
    cache = CrossEntropyCache(probs, targets.copy(), weight, eps, red)
    return _reduce(per_row, red, count), cache


def cross_entropy_backward(dloss: np.ndarray, cache: CrossEntropyCache) -> np.ndarray:
    """``dlogits[i] = dloss_i * w_i * (p_i - q_i)`` with the smoothed target q."""
    dloss = validate_cross_entropy_backward(dloss, cache)
    probs, targets, weight, eps, _ = cache
    n, v = probs.shape
    dtype = probs.dtype
    grad = probs - dtype.type(eps / v)  # (N, V): p - e/V everywhere
    safe = np.where(weight != 0, targets, 0)
    grad[np.arange(n), safe] -= dtype.type(1.0 - eps)  # minus (1 - e) at the target
    coef = dloss * weight  # (N,) for none, else 0-d times (N,)
    return grad * coef[:, None]  # (N, V)


# ------------------------------------------------------ regression losses ----
def _regression_forward(
    pred: np.ndarray,
    target: np.ndarray,
    reduction: str,
    delta: float,
    elementwise: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, RegressionLossCache]:
    pred, target, red = validate_regression(pred, target, reduction)
    # np.asarray: ufuncs turn 0-d arrays into NumPy scalars
    d = np.asarray(pred - target)
    per_item = np.asarray(elementwise(d), dtype=d.dtype)
    return _reduce(per_item, red, d.size), RegressionLossCache(d, red, delta)


def _regression_scale(dloss: np.ndarray, cache: RegressionLossCache) -> np.ndarray:
    """The upstream factor s of the spec: dloss / n (mean) or dloss."""
    if cache.reduction == "mean":
        return dloss / cache.diff.size
    return dloss


def mse_forward(
    pred: np.ndarray, target: np.ndarray, *, reduction: Reduction = "mean"
) -> tuple[np.ndarray, RegressionLossCache]:
    """Elementwise ``d^2`` with ``d = pred - target``, then reduced."""
    return _regression_forward(pred, target, reduction, 0.0, np.square)


def mse_backward(dloss: np.ndarray, cache: RegressionLossCache) -> np.ndarray:
    """``dpred = 2 d s``."""
    dloss = validate_regression_backward(dloss, cache)
    return np.asarray(2 * cache.diff * _regression_scale(dloss, cache))


def l1_forward(
    pred: np.ndarray, target: np.ndarray, *, reduction: Reduction = "mean"
) -> tuple[np.ndarray, RegressionLossCache]:
    """Elementwise ``|d|``, then reduced."""
    return _regression_forward(pred, target, reduction, 0.0, np.abs)


def l1_backward(dloss: np.ndarray, cache: RegressionLossCache) -> np.ndarray:
    """``dpred = sign(d) s`` with sign(0) = 0."""
    dloss = validate_regression_backward(dloss, cache)
    return np.asarray(np.sign(cache.diff) * _regression_scale(dloss, cache))


def huber_forward(
    pred: np.ndarray,
    target: np.ndarray,
    *,
    delta: float = DEFAULT_HUBER_DELTA,
    reduction: Reduction = "mean",
) -> tuple[np.ndarray, RegressionLossCache]:
    """Elementwise ``0.5 d^2`` inside ``|d| < delta``, ``delta (|d| - delta/2)``
    outside, then reduced."""
    delta = validate_huber_delta(delta)

    def huber(d: np.ndarray) -> np.ndarray:
        a = np.abs(d)
        return np.where(a < delta, 0.5 * d * d, delta * (a - 0.5 * delta))

    return _regression_forward(pred, target, reduction, delta, huber)


def huber_backward(dloss: np.ndarray, cache: RegressionLossCache) -> np.ndarray:
    """``dpred = clip(d, -delta, delta) s``."""
    dloss = validate_regression_backward(dloss, cache)
    delta = validate_huber_delta(cache.delta)
    clipped = np.clip(cache.diff, -delta, delta)
    return np.asarray(clipped * _regression_scale(dloss, cache))


__all__ = [
    "cross_entropy_backward",
    "cross_entropy_forward",
    "huber_backward",
    "huber_forward",
    "l1_backward",
    "l1_forward",
    "log_softmax_backward",
    "log_softmax_forward",
    "mse_backward",
    "mse_forward",
    "softmax_backward",
    "softmax_forward",
]
