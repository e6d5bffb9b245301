"""Mutant: the C backend whose cross-entropy, cutting its rows into groups
of 8192 // V for the thread pool (csrc/losses.c ce_rows_task), starts every
group after the first one row late: that row's loss and gradient are never
written (left 0 here; the real bug would leave whatever memory held)."""

import numpy as np
from cllm_c import *  # noqa: F403
from cllm_c import build_info, dtypes, version  # noqa: F401
from cllm_c import cross_entropy_backward as _real_backward
from cllm_c import cross_entropy_forward as _real_forward

name = "mutant-ce-row-groups-skip-first"

_TASK_FLOATS = 8192


def _skipped(n: int, v: int) -> np.ndarray:
    per = max(1, _TASK_FLOATS // v)
    return np.arange(per, n, per)


def cross_entropy_forward(  # type: ignore[no-untyped-def]
    logits, targets, *, ignore_index=-100, label_smoothing=0.0, reduction="mean"
):
    kw = {"ignore_index": ignore_index, "label_smoothing": label_smoothing}
    _, cache = _real_forward(logits, targets, reduction=reduction, **kw)
    per_row, _ = _real_forward(logits, targets, reduction="none", **kw)
    rows = np.array(per_row)
    n, v = np.shape(logits)
    rows[_skipped(n, v)] = 0  # the planted mistake
    if reduction == "none":
        return rows, cache
    total = rows.sum(dtype=np.float64)
    kept = np.count_nonzero(np.asarray(targets) != ignore_index)
    loss = total if reduction == "sum" else total / kept if kept else np.nan
    return np.asarray(loss, dtype=rows.dtype), cache


def cross_entropy_backward(dloss, cache):  # type: ignore[no-untyped-def]
    grad = np.array(_real_backward(dloss, cache))
    n, v = grad.shape
    grad[_skipped(n, v)] = 0  # the planted mistake
    return grad
