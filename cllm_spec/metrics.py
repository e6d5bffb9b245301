"""Evaluation metrics: perplexity, token accuracy, top-k accuracy, macro P/R/F1.

Pure NumPy functions of arrays that return Python floats; they run on any
backend's outputs, so there is nothing for a backend to implement.

Shapes::

    logits:  (N, V) float32 | float64     one row of class scores per position
    targets: (N,)   int32 | int64         class ids in [0, V), or ignore_index
    pred:    (N,)   int32 | int64         predicted ids in [0, num_classes)

Positions whose target equals ``ignore_index`` (default -100, as in PyTorch's
cross-entropy) are left out of every metric, whatever the logits or the
prediction there. If no position is left, the metric is undefined and the call
raises ``EmptyInputError`` (returning NaN would slip into averages unnoticed).

perplexity(loss)
    ``exp(mean(loss))``: ``loss`` is a mean cross-entropy in nats (a float) or an
    array of per-token cross-entropies, averaged in float64. Cross-entropy is
    never negative, so a negative value (the float, or any element of the
    array) is a ``ConfigError``: a loss below 0 was the original project's bug.
    NaN is a ``NonFiniteError``. ``+inf``, and any mean above ``log(max
    float64) ~ 709.78`` where exp overflows, gives ``inf``.

token_accuracy(logits, targets, ignore_index=-100)
    The fraction of kept positions where ``argmax_v logits[n, v] == targets[n]``.
    Ties go to the lowest index (``numpy.argmax`` and ``torch.argmax``).

top_k_accuracy(logits, targets, k, ignore_index=-100)
    The fraction of kept positions whose target is among the ``k`` best classes,
    ``1 <= k <= V``. Ties are broken as by argmax, toward the lower index: class
    ``c`` ranks before class ``d`` if ``logits[c] > logits[d]``, or if they are
    equal and ``c < d``. The target's rank is the number of classes ranked
    before it, and it counts if that rank is ``< k``. So ``k = 1`` is exactly
    ``token_accuracy`` and ``k = V`` is 1.

macro_precision_recall_f1(pred, targets, num_classes, ignore_index=-100)
    Per class c over the kept positions: ``tp = #(pred = c and target = c)``,
    ``fp = #(pred = c and target != c)``, ``fn = #(pred != c and target = c)``;
    ``precision = tp / (tp + fp)``, ``recall = tp / (tp + fn)``, ``f1 = 2 tp /
    (2 tp + fp + fn)`` (the harmonic mean of the two), each 0 when its
    denominator is 0. The macro average is the unweighted mean over the classes
    that occur in the kept targets or predictions; classes absent from both are
    left out instead of counting as 0 (or 1). This is scikit-learn's
    ``precision_recall_fscore_support(average="macro", zero_division=0)`` with
    its default label set. Returns ``(precision, recall, f1)``.

Errors: logits not float32/float64, or ids not int32/int64: ``DTypeError``;
wrong ranks or lengths that differ: ``ShapeError``; N == 0 or V == 0:
``EmptyInputError``; a target outside [0, V) that is not ``ignore_index``, or a
prediction outside [0, num_classes): ``IdRangeError``; NaN in logits:
``NonFiniteError`` (+-inf is a valid score, e.g. a masked class); ``k``,
``num_classes`` or ``ignore_index`` of the wrong type or range: ``ConfigError``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cllm_spec import checks
from cllm_spec.errors import ConfigError, EmptyInputError, NonFiniteError

# exp(x) overflows float64 above this (log of the largest finite float64)
_LOG_MAX = math.log(np.finfo(np.float64).max)


def _validate_scores(logits: Any, targets: Any, ignore_index: Any) -> np.ndarray:
    """Checks logits (N, V) and targets (N,); returns the mask of kept rows."""
    checks.expect_float("logits", logits)
    checks.expect_rank("logits", logits, 2)
    checks.expect_nonempty("logits", logits)
    checks.expect_int("targets", targets)
    checks.expect_shape("targets", targets, (logits.shape[0],))
    ignore = checks.expect_int_scalar("ignore_index", ignore_index)
    checks.expect_ids("targets", targets, logits.shape[1], ignore_index=ignore)
    if np.isnan(logits).any():
        raise NonFiniteError(f"logits: {int(np.isnan(logits).sum())} NaN value(s)")
    return _kept(targets, ignore)


def _kept(targets: np.ndarray, ignore_index: int) -> np.ndarray:
    keep: np.ndarray = targets != ignore_index
    if not keep.any():
        raise EmptyInputError(
            f"every target equals ignore_index={ignore_index}: nothing to score"
        )
    return keep


def perplexity(loss: float | np.ndarray) -> float:
    """``exp(mean cross-entropy)``; ``inf`` where exp overflows (see module doc)."""
    if isinstance(loss, np.ndarray):
        checks.expect_float("loss", loss)
        checks.expect_nonempty("loss", loss)
        if np.any(loss < 0):  # NaN compares False here and is caught below
            raise ConfigError(
                f"loss: cross-entropy is never negative, got {int(np.sum(loss < 0))} "
                "negative value(s)",
                hint="check how the loss was computed: a negative CE is a bug upstream",
            )
        mean = float(np.mean(loss, dtype=np.float64))
    elif isinstance(loss, bool) or not isinstance(loss, int | float | np.floating):
        raise ConfigError(f"loss: expected a number, got {type(loss).__name__}")
    else:
        mean = float(loss)
    if math.isnan(mean):
        raise NonFiniteError("loss: NaN (is the cross-entropy upstream finite?)")
    if mean < 0.0:
        raise ConfigError(
            f"loss: cross-entropy is never negative, got mean {mean}",
            hint="check how the loss was computed: a negative CE is a bug upstream",
        )
    return math.inf if mean > _LOG_MAX else math.exp(mean)


def token_accuracy(
    logits: np.ndarray, targets: np.ndarray, ignore_index: int = -100
) -> float:
    """Fraction of kept positions where the argmax equals the target."""
    keep = _validate_scores(logits, targets, ignore_index)
    hits = np.argmax(logits, axis=1) == targets  # (N,)
    return float(np.count_nonzero(hits & keep) / np.count_nonzero(keep))


def top_k_accuracy(
    logits: np.ndarray, targets: np.ndarray, k: int, ignore_index: int = -100
) -> float:
    """Fraction of kept positions whose target ranks among the k best classes."""
    keep = _validate_scores(logits, targets, ignore_index)
    v = logits.shape[1]
    k = checks.expect_int_scalar("k", k)
    if not 1 <= k <= v:
        raise ConfigError(f"k: expected 1 <= k <= V={v}, got {k}")
    rows = np.flatnonzero(keep)
    scores, tgt = logits[rows], targets[rows]  # (N', V), (N',)
    own = scores[np.arange(rows.size), tgt][:, None]  # (N', 1) target's score
    lower = np.arange(v)[None, :] < tgt[:, None]  # (N', V) classes with c < target
    rank = np.sum((scores > own) | ((scores == own) & lower), axis=1)  # (N',)
    return float(np.count_nonzero(rank < k) / rows.size)


def macro_precision_recall_f1(
    pred: np.ndarray,
    targets: np.ndarray,
    num_classes: int,
    ignore_index: int = -100,
) -> tuple[float, float, float]:
    """Macro-averaged precision, recall and F1 over the classes present."""
    c = checks.expect_positive_int("num_classes", num_classes)
    checks.expect_int("pred", pred)
    checks.expect_rank("pred", pred, 1)
    checks.expect_nonempty("pred", pred)
    checks.expect_int("targets", targets)
    checks.expect_shape("targets", targets, pred.shape)
    ignore = checks.expect_int_scalar("ignore_index", ignore_index)
    checks.expect_ids("targets", targets, c, ignore_index=ignore)
    checks.expect_ids("pred", pred, c)
    keep = _kept(targets, ignore)
    p, t = pred[keep], targets[keep]
    tp = np.bincount(p[p == t], minlength=c)  # (C,)
    n_pred = np.bincount(p, minlength=c)  # (C,) tp + fp
    n_true = np.bincount(t, minlength=c)  # (C,) tp + fn
    present = (n_pred + n_true) > 0
    tp, n_pred, n_true = tp[present], n_pred[present], n_true[present]
    precision = np.divide(tp, n_pred, out=np.zeros(tp.size), where=n_pred > 0)
    recall = np.divide(tp, n_true, out=np.zeros(tp.size), where=n_true > 0)
    f1 = 2.0 * tp / (n_pred + n_true)  # 2tp + fp + fn > 0 for a present class
    return float(precision.mean()), float(recall.mean()), float(f1.mean())
