"""Losses: softmax, log-softmax, cross-entropy, MSE, L1 and Huber, with backward.

Semantics are PyTorch's (``torch.softmax``, ``torch.log_softmax``,
``torch.nn.functional.cross_entropy``, ``mse_loss``, ``l1_loss``, ``huber_loss``)
except where "Deviation" says otherwise. Every float argument of one call shares
one dtype (float32 or float64, nothing is cast) and every output has that dtype.

Softmax and log-softmax
-----------------------
``x: (..., V) float``, rank >= 1, V >= 1, reduced over the last axis::

    m = max_c x[..., c]                       (subtracted first: exp never overflows)
    softmax(x)_c     = exp(x_c - m) / sum_k exp(x_k - m)
    log_softmax(x)_c = (x_c - m) - log(sum_k exp(x_k - m))

Backward, with ``y`` the saved output and ``dy: (..., V)``::

    softmax:     dx = y * (dy - sum_c(dy * y))
    log_softmax: dx = dy - exp(y) * sum_c(dy)

Non-finite input propagates as in PyTorch (these are building blocks, and
attention masks with -inf): a ``-inf`` entry gets probability 0 (log-probability
-inf) when the row has a finite entry; a row holding NaN or ``+inf``, or only
``-inf``, becomes all NaN.

Cross-entropy
-------------
``logits: (N, V) float``, ``targets: (N,) int32|int64``; ``ignore_index: int``
(default -100), ``label_smoothing: e`` in [0, 1] (default 0), ``reduction`` in
mean | sum | none (default mean). With ``p = softmax(logits)`` and
``lse_i = log sum_c exp(logits[i, c])`` (computed with the row max subtracted)::

    q_i      = (1 - e) * onehot(y_i) + e / V     (PyTorch's e/V, not e/(V-1))
    l_i      = sum_c q_i[c] * (-log p[i, c])
             = (1 - e) * (lse_i - logits[i, y_i]) + e * (lse_i - mean_c logits[i, c])
    l_i      = 0 where y_i == ignore_index
    count    = #{i : y_i != ignore_index}

    none: (N,) l;  sum: () sum_i l_i;  mean: () sum_i l_i / count

Both terms are differences ``lse_i - z`` with ``z <= max_c logits[i, c] <= lse_i``,
so every l_i is finite and >= 0 for finite logits, whatever the gap between them
(a float32 gap of 1e4 included). When every row is ignored, ``mean`` is 0/0 = NaN,
as in PyTorch, and the backward is all zeros.

Backward, ``dloss: ()`` for mean and sum, ``(N,)`` for none::

    w_i        = 1 / count (mean), 1 (sum, none), 0 where y_i == ignore_index
    dlogits[i] = dloss_i * w_i * (p_i - q_i)          dlogits: (N, V)

(``dloss_i`` is the 0-d ``dloss`` for mean and sum.) The cache
(:class:`~cllm_spec.protocols.CrossEntropyCache`) holds ``probs`` (N, V), ``targets``
(N,), ``weight`` = w (N,), ``label_smoothing`` and ``reduction``.

Deviation from PyTorch: logits must be finite (NaN, +inf and -inf raise
NonFiniteError). PyTorch returns a NaN loss for NaN logits and accepts -inf
logits as "class masked out". The loss is the signal every parameter update
follows, and a non-finite one silently poisons all parameters through the
backward, so the spec stops at the loss instead; mask classes with a large
finite negative logit. Class weights and probability targets are not supported;
callers with (B, T, V) logits pass ``logits.reshape(B * T, V)``.

Regression losses
-----------------
``pred, target: (...) float``, same shape and dtype, at least one element;
``d = pred - target``, ``n = d.size``::

    mse:   e = d^2
    l1:    e = |d|
    huber: e = 0.5 * d^2                   if |d| < delta
               delta * (|d| - 0.5 * delta)  otherwise           (delta > 0, default 1.0)

    none: e (same shape as pred);  sum: () sum e;  mean: () sum e / n

Backward returns ``dpred`` only; the gradient with respect to ``target`` is
``-dpred``. With ``s = dloss / n`` (mean), ``dloss`` (sum: 0-d; none: same shape
as pred)::

    mse:   dpred = 2 * d * s
    l1:    dpred = sign(d) * s          (sign(0) = 0, as in PyTorch)
    huber: dpred = clip(d, -delta, delta) * s

Like cross-entropy, regression losses reject non-finite ``pred`` and ``target``
(NonFiniteError; PyTorch would propagate NaN), for the same reason.

Errors (all checked before any computation)
-------------------------------------------
- DTypeError: a float argument that is not float32/float64, float arguments of
  different dtypes, targets that are not int32/int64, a non-ndarray argument;
- ShapeError: wrong rank (x rank 0, logits not rank 2, targets not (N,)), pred and
  target shapes differ, dy/dloss shape not what the cache implies;
- EmptyInputError: an input with no elements (N = 0 or V = 0 included);
- IdRangeError: a target outside [0, V) that is not ``ignore_index``;
- NonFiniteError: non-finite logits, pred, target or dloss;
- ConfigError: ``label_smoothing`` outside [0, 1], ``reduction`` not one of the
  three, ``delta <= 0`` or non-finite, ``ignore_index`` not an int.
"""

from __future__ import annotations

import numbers

import numpy as np

from cllm_spec.checks import (
    expect_cache,
    expect_choice,
    expect_finite,
    expect_float,
    expect_ids,
    expect_in_range,
    expect_int,
    expect_min_rank,
    expect_nonempty,
    expect_rank,
    expect_same_dtype,
    expect_shape,
)
from cllm_spec.errors import ConfigError
from cllm_spec.protocols import (
    CrossEntropyCache,
    LogSoftmaxCache,
    RegressionLossCache,
    SoftmaxCache,
)

REDUCTIONS = ("mean", "sum", "none")
DEFAULT_IGNORE_INDEX = -100
DEFAULT_HUBER_DELTA = 1.0


# ------------------------------------------------------- softmax family ----
def validate_softmax(x: object) -> np.ndarray:
    """``x: (..., V)`` float, rank >= 1, non-empty. Non-finite values are allowed."""
    arr = expect_float("x", x)
    expect_min_rank("x", arr, 1)
    expect_nonempty("x", arr)
    return arr


def validate_softmax_backward(
    dy: object,
    cache: SoftmaxCache | LogSoftmaxCache,
    cls: type[SoftmaxCache] | type[LogSoftmaxCache] | None = None,
) -> np.ndarray:
    """``dy`` has the dtype and shape of the saved output ``cache.y``; ``cache``
    is a ``cls`` (either softmax cache when ``cls`` is None)."""
    if cls is None:
        cls = LogSoftmaxCache if isinstance(cache, LogSoftmaxCache) else SoftmaxCache
    y = expect_float("cache.y", expect_cache(cache, cls).y)
    grad = expect_float("dy", dy)
    expect_same_dtype(("dy", "cache.y"), (grad, y))
    expect_shape("dy", grad, y.shape)
    return grad


# --------------------------------------------------------- cross-entropy ----
def validate_ignore_index(ignore_index: object) -> int:
    """Any int64 (bool excluded); it need not lie in [0, V)."""
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise ConfigError(
            f"ignore_index: expected an int, got {type(ignore_index).__name__}"
        )
    if not -(2**63) <= int(ignore_index) < 2**63:
        raise ConfigError(f"ignore_index: expected an int64, got {ignore_index}")
    return int(ignore_index)


def validate_cross_entropy(
    logits: object,
    targets: object,
    ignore_index: object,
    label_smoothing: object,
    reduction: object,
) -> tuple[np.ndarray, np.ndarray, int, float, str]:
    """Check every argument of ``cross_entropy_forward``; return them normalized."""
    z = expect_float("logits", logits)
    y = expect_int("targets", targets)
    expect_rank("logits", z, 2)
    expect_nonempty("logits", z)
    expect_shape("targets", y, (z.shape[0],))
    ignore = validate_ignore_index(ignore_index)
    smoothing = expect_in_range("label_smoothing", label_smoothing, 0.0, 1.0)
    red = expect_choice("reduction", reduction, REDUCTIONS)
    expect_ids("targets", y, z.shape[1], ignore_index=ignore)
    expect_finite("logits", z)
    return z, y, ignore, smoothing, red


def validate_cross_entropy_backward(
    dloss: object, cache: CrossEntropyCache
) -> np.ndarray:
    """``dloss`` is 0-d (mean, sum) or (N,) (none), finite, in the cache's dtype."""
    expect_cache(cache, CrossEntropyCache)
    probs = expect_float("cache.probs", cache.probs)
    expect_rank("cache.probs", probs, 2)
    targets = expect_int("cache.targets", cache.targets)
    weight = expect_float("cache.weight", cache.weight)
    n, v = probs.shape
    expect_shape("cache.targets", targets, (n,))
    expect_shape("cache.weight", weight, (n,))
    red = expect_choice("cache.reduction", cache.reduction, REDUCTIONS)
    expect_in_range("cache.label_smoothing", cache.label_smoothing, 0.0, 1.0)
    # Rows with weight 0 are ignored; every other target indexes a class.
    expect_ids("cache.targets", targets[weight != 0], v)
    grad = expect_float("dloss", dloss)
    expect_same_dtype(("dloss", "cache.probs", "cache.weight"), (grad, probs, weight))
    expect_shape("dloss", grad, (n,) if red == "none" else ())
    expect_finite("dloss", grad)
    return grad


# ------------------------------------------------------ regression losses ----
def validate_regression(
    pred: object, target: object, reduction: object
) -> tuple[np.ndarray, np.ndarray, str]:
    """``pred`` and ``target`` share shape and dtype, are non-empty and finite."""
    p = expect_float("pred", pred)
    t = expect_float("target", target)
    expect_same_dtype(("pred", "target"), (p, t))
    expect_shape("target", t, p.shape)
    expect_nonempty("pred", p)
    red = expect_choice("reduction", reduction, REDUCTIONS)
    expect_finite("pred", p)
    expect_finite("target", t)
    return p, t, red


def validate_huber_delta(delta: object) -> float:
    """``delta`` is finite and > 0."""
    return expect_in_range("delta", delta, 0.0, np.inf, lo_open=True)


def validate_regression_backward(
    dloss: object, cache: RegressionLossCache
) -> np.ndarray:
    """``dloss`` is 0-d (mean, sum) or shaped like ``pred`` (none), finite."""
    expect_cache(cache, RegressionLossCache)
    diff = expect_float("cache.diff", cache.diff)
    red = expect_choice("cache.reduction", cache.reduction, REDUCTIONS)
    grad = expect_float("dloss", dloss)
    expect_same_dtype(("dloss", "cache.diff"), (grad, diff))
    expect_shape("dloss", grad, diff.shape if red == "none" else ())
    expect_finite("dloss", grad)
    return grad


__all__ = [
    "DEFAULT_HUBER_DELTA",
    "DEFAULT_IGNORE_INDEX",
    "REDUCTIONS",
    "validate_cross_entropy",
    "validate_cross_entropy_backward",
    "validate_huber_delta",
    "validate_ignore_index",
    "validate_regression",
    "validate_regression_backward",
    "validate_softmax",
    "validate_softmax_backward",
]
