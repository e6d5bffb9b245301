"""Losses on the C kernels of ``csrc/losses_softmax.c``, ``csrc/losses.c``
(cross-entropy) and ``csrc/losses_regression.c``.

The math, shapes and error contract are in :mod:`cllm_spec.losses`; every
function validates with the same checks as the reference before calling C.
Cross-entropy is fused: one pass per row computes the max, the softmax, the
log-sum-exp and the row's loss.
"""

from __future__ import annotations

import numpy as np

from cllm_c._lib import F32, arr, check, empty, ids64, kernel, lib, ptr, scalar_out
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

_REDUCTIONS = {"mean": 0, "sum": 1, "none": 2}
_REGRESSION = {"mse": 0, "l1": 1, "huber": 2}


# ------------------------------------------------------- softmax family ----
def _softmax(x: np.ndarray, log: int) -> np.ndarray:
    xc = arr("x", validate_softmax(x))
    v = x.shape[-1]
    y = empty(x.shape, dtype=x.dtype)  # (..., V)
    status = kernel("cllm_softmax_forward", x.dtype)(
        ptr(xc), ptr(y), xc.size // v, v, log
    )
    check(status, "softmax")
    return y


def _softmax_backward(dy: np.ndarray, y: np.ndarray, log: int) -> np.ndarray:
    dyc = arr("dy", dy)
    yc = arr("cache.y", y, dyc.dtype, dyc.shape)
    v = y.shape[-1]
    dx = empty(y.shape, dtype=y.dtype)  # (..., V)
    status = kernel("cllm_softmax_backward", y.dtype)(
        ptr(dyc), ptr(yc), ptr(dx), yc.size // v, v, log
    )
    check(status, "softmax_backward")
    return dx


def softmax_forward(x: np.ndarray) -> tuple[np.ndarray, SoftmaxCache]:
    """``y = exp(x - m) / sum exp(x - m)`` over the last axis."""
    y = _softmax(x, 0)
    return y, SoftmaxCache(y)


def softmax_backward(dy: np.ndarray, cache: SoftmaxCache) -> np.ndarray:
    """``dx = y * (dy - sum(dy * y))``."""
    validate_softmax_backward(dy, cache, SoftmaxCache)
    return _softmax_backward(dy, cache.y, 0)


def log_softmax_forward(x: np.ndarray) -> tuple[np.ndarray, LogSoftmaxCache]:
    """``y = (x - m) - log sum exp(x - m)`` over the last axis."""
    y = _softmax(x, 1)
    return y, LogSoftmaxCache(y)


def log_softmax_backward(dy: np.ndarray, cache: LogSoftmaxCache) -> np.ndarray:
    """``dx = dy - exp(y) * sum(dy)``."""
    validate_softmax_backward(dy, cache, LogSoftmaxCache)
    return _softmax_backward(dy, cache.y, 1)


# --------------------------------------------------------- cross-entropy ----
def cross_entropy_forward(
    logits: np.ndarray,
    targets: np.ndarray,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
) -> tuple[np.ndarray, CrossEntropyCache]:
    """Fused softmax + label-smoothed cross-entropy of ``logits: (N, V)``."""
    logits, targets, ignore, eps, red = validate_cross_entropy(
        logits, targets, ignore_index, label_smoothing, reduction
    )
    return _cross_entropy(logits, targets, ignore, eps, red)


class GradientCache(CrossEntropyCache):
    """A cross-entropy cache whose ``probs`` holds ``d loss / d logits`` for a
    ``dloss`` of 1, computed by the forward (``_cross_entropy(grad=True)``)."""

    __slots__ = ()


def _cross_entropy(
    logits: np.ndarray,
    targets: np.ndarray,
    ignore: int,
    eps: float,
    red: str,
    in_place: bool = False,
    grad: bool = False,
) -> tuple[np.ndarray, CrossEntropyCache]:
    """The loss and its cache; with ``in_place`` the probabilities are written
    over ``logits`` (when that is a contiguous writeable array), which then no
    longer holds the logits: the model's training forward, which returns no
    logits, saves an (N, V) buffer that way. With ``grad`` the cache is a
    :class:`GradientCache`: the gradient for ``dloss = 1`` in place of the
    probabilities, each row written while it is in the cache (float32; float64
    runs the backward after), the bits :func:`_cross_entropy_backward` would
    give."""
    z = arr("logits", logits)
    n, v = z.shape
    dt = z.dtype
    _, tp = ids64(targets)
    reuse = in_place and z is logits and z.flags.writeable
    probs = z if reuse else empty((n, v), dtype=dt)
    weight = empty(n, dtype=dt)
    per_row = empty(n, dtype=dt)
    loss = scalar_out(dt)
    fused = grad and dt == F32
    entry = (
        lib.cllm_cross_entropy_forward_grad
        if fused
        else kernel("cllm_cross_entropy_forward", dt)
    )
    status = entry(
        ptr(z), tp, n, v, ignore, eps, _REDUCTIONS[red], ptr(probs), ptr(weight),
        ptr(per_row), loss,
    )  # fmt: skip
    check(status, "cross_entropy_forward")
    out = per_row if red == "none" else np.asarray(loss[0], dtype=dt)
    cache = CrossEntropyCache(probs, targets.copy(), weight, eps, red)
    if not grad:
        return out, cache
    if not fused:
        _cross_entropy_backward(np.ones((), dtype=dt), cache, in_place=True)
    return out, GradientCache(*cache)


def cross_entropy_backward(dloss: np.ndarray, cache: CrossEntropyCache) -> np.ndarray:
    """``dlogits[i] = dloss_i * w_i * (p_i - q_i)`` with the smoothed target q."""
    dloss = validate_cross_entropy_backward(dloss, cache)
    return _cross_entropy_backward(dloss, cache)


def _cross_entropy_backward(
    dloss: np.ndarray, cache: CrossEntropyCache, in_place: bool = False
) -> np.ndarray:
    """The logits' gradient; with ``in_place`` written over ``cache.probs``
    (when that is a contiguous writeable array), which the cache then no
    longer holds: the model's backward, which consumes its cache, saves an
    (N, V) buffer that way, 491 MB on the production model."""
    dl = arr("dloss", dloss)
    probs = arr("cache.probs", cache.probs, dl.dtype)
    n, v = probs.shape
    weight = arr("cache.weight", cache.weight, dl.dtype, (n,))
    _, tp = ids64(cache.targets)
    reuse = in_place and probs is cache.probs and probs.flags.writeable
    dlogits = probs if reuse else empty((n, v), dtype=probs.dtype)
    status = kernel("cllm_cross_entropy_backward", probs.dtype)(
        ptr(probs), tp, ptr(weight), ptr(dl.reshape(-1)), int(dl.ndim == 1), n, v,
        float(cache.label_smoothing), ptr(dlogits),
    )  # fmt: skip
    check(status, "cross_entropy_backward")
    return dlogits


# ------------------------------------------------------ regression losses ----
def _regression_forward(
    kind: str, pred: np.ndarray, target: np.ndarray, reduction: str, delta: float
) -> tuple[np.ndarray, RegressionLossCache]:
    pred, target, red = validate_regression(pred, target, reduction)
    p, t = arr("pred", pred), arr("target", target)
    dt = p.dtype
    diff = empty(p.shape, dtype=dt)
    per_item = empty(p.shape, dtype=dt) if red == "none" else None
    loss = scalar_out(dt)
    status = kernel("cllm_regression_forward", dt)(
        _REGRESSION[kind], ptr(p), ptr(t), p.size, delta, _REDUCTIONS[red],
        ptr(diff), ptr(per_item), loss,
    )  # fmt: skip
    check(status, f"{kind}_forward")
    out = per_item if per_item is not None else np.asarray(loss[0], dtype=dt)
    return out, RegressionLossCache(diff, red, delta)


def _regression_backward(
    kind: str, dloss: np.ndarray, cache: RegressionLossCache, delta: float
) -> np.ndarray:
    dloss = validate_regression_backward(dloss, cache)
    dl = arr("dloss", dloss)
    diff = arr("cache.diff", cache.diff, dl.dtype)
    dpred = empty(diff.shape, dtype=diff.dtype)
    per_item = int(cache.reduction == "none")
    status = kernel("cllm_regression_backward", diff.dtype)(
        _REGRESSION[kind], ptr(diff), ptr(dl.reshape(-1)), per_item, diff.size, delta,
        _REDUCTIONS[cache.reduction], ptr(dpred),
    )  # fmt: skip
    check(status, f"{kind}_backward")
    return dpred


def mse_forward(
    pred: np.ndarray, target: np.ndarray, *, reduction: Reduction = "mean"
) -> tuple[np.ndarray, RegressionLossCache]:
    """Elementwise ``d^2`` with ``d = pred - target``, then reduced."""
    return _regression_forward("mse", pred, target, reduction, 0.0)


def mse_backward(dloss: np.ndarray, cache: RegressionLossCache) -> np.ndarray:
    """``dpred = 2 d s``."""
    return _regression_backward("mse", dloss, cache, 0.0)


def l1_forward(
    pred: np.ndarray, target: np.ndarray, *, reduction: Reduction = "mean"
) -> tuple[np.ndarray, RegressionLossCache]:
    """Elementwise ``|d|``, then reduced."""
    return _regression_forward("l1", pred, target, reduction, 0.0)


def l1_backward(dloss: np.ndarray, cache: RegressionLossCache) -> np.ndarray:
    """``dpred = sign(d) s`` with sign(0) = 0."""
    return _regression_backward("l1", dloss, cache, 0.0)


def huber_forward(
    pred: np.ndarray,
    target: np.ndarray,
    *,
    delta: float = DEFAULT_HUBER_DELTA,
    reduction: Reduction = "mean",
) -> tuple[np.ndarray, RegressionLossCache]:
    """``0.5 d^2`` inside ``|d| < delta``, ``delta (|d| - delta/2)`` outside."""
    delta = validate_huber_delta(delta)
    return _regression_forward("huber", pred, target, reduction, delta)


def huber_backward(dloss: np.ndarray, cache: RegressionLossCache) -> np.ndarray:
    """``dpred = clip(d, -delta, delta) s``."""
    validate_regression_backward(dloss, cache)  # the cache itself before its delta
    delta = validate_huber_delta(cache.delta)
    return _regression_backward("huber", dloss, cache, delta)
