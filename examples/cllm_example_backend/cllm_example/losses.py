"""MSE, L1 and Huber losses, forward and backward (spec: ``cllm_spec.losses``).

With ``d = pred - target`` (any shape, float32 or float64) and ``n = d.size``::

    mse:    l_i = d_i^2                      dpred = 2 d s
    l1:     l_i = |d_i|                      dpred = sign(d) s   (sign(0) = 0)
    huber:  l_i = d_i^2 / 2   if |d_i| < delta
                  delta (|d_i| - delta / 2)  otherwise
                                             dpred = clip(d, -delta, delta) s

reduced by ``reduction``: ``"mean"`` (sum / n), ``"sum"``, or ``"none"`` (the
elementwise losses). ``s`` is the upstream gradient ``dloss``, divided by ``n``
for the mean. The sums here accumulate in float64 and round once to the
input's dtype: another order of operations than the reference backend's, which
the suite accepts because it compares within the tolerances of
``cllm_spec.tolerances``, never bit for bit.

Validation is the spec's own (``cllm_spec.losses.validate_*``), so every bad
input raises the typed error the suite expects.
"""

from __future__ import annotations

import numpy as np

from cllm_spec.losses import (
    DEFAULT_HUBER_DELTA,
    validate_huber_delta,
    validate_regression,
    validate_regression_backward,
)
from cllm_spec.protocols import Reduction, RegressionLossCache


def _reduce(per_item: np.ndarray, reduction: str) -> np.ndarray:
    if reduction == "none":
        return per_item
    total = np.sum(per_item, dtype=np.float64)
    if reduction == "mean":
        total = total / per_item.size if per_item.size else np.float64(np.nan)
    return np.asarray(total, dtype=per_item.dtype)


def _forward(pred, target, reduction, delta, kind):  # type: ignore[no-untyped-def]
    pred, target, red = validate_regression(pred, target, reduction)
    d = np.asarray(pred - target)
    if kind == "mse":
        per_item = d * d
    elif kind == "l1":
        per_item = np.abs(d)
    else:
        a = np.abs(d)
        per_item = np.where(a < delta, 0.5 * d * d, delta * (a - 0.5 * delta))
    per_item = np.asarray(per_item, dtype=d.dtype)
    return _reduce(per_item, red), RegressionLossCache(d, red, delta)


def _scale(dloss: np.ndarray, cache: RegressionLossCache) -> np.ndarray:
    return dloss / cache.diff.size if cache.reduction == "mean" else dloss


def mse_forward(
    pred: np.ndarray, target: np.ndarray, *, reduction: Reduction = "mean"
) -> tuple[np.ndarray, RegressionLossCache]:
    return _forward(pred, target, reduction, 0.0, "mse")


def mse_backward(dloss: np.ndarray, cache: RegressionLossCache) -> np.ndarray:
    dloss = validate_regression_backward(dloss, cache)
    return np.asarray(2 * cache.diff * _scale(dloss, cache))


def l1_forward(
    pred: np.ndarray, target: np.ndarray, *, reduction: Reduction = "mean"
) -> tuple[np.ndarray, RegressionLossCache]:
    return _forward(pred, target, reduction, 0.0, "l1")


def l1_backward(dloss: np.ndarray, cache: RegressionLossCache) -> np.ndarray:
    dloss = validate_regression_backward(dloss, cache)
    return np.asarray(np.sign(cache.diff) * _scale(dloss, cache))


def huber_forward(
    pred: np.ndarray,
    target: np.ndarray,
    *,
    delta: float = DEFAULT_HUBER_DELTA,
    reduction: Reduction = "mean",
) -> tuple[np.ndarray, RegressionLossCache]:
    return _forward(pred, target, reduction, validate_huber_delta(delta), "huber")


def huber_backward(dloss: np.ndarray, cache: RegressionLossCache) -> np.ndarray:
    dloss = validate_regression_backward(dloss, cache)
    delta = validate_huber_delta(cache.delta)
    return np.asarray(np.clip(cache.diff, -delta, delta) * _scale(dloss, cache))
