"""Mutant: cross-entropy as -log(softmax) without the max shift (overflows)."""

import numpy as np
from cllm_numpy import losses as _ref

from conformance.mutants._base import *  # noqa: F403

name = "mutant-ce-no-logsumexp"


def cross_entropy_forward(  # type: ignore[no-untyped-def]
    logits, targets, *, ignore_index=-100, label_smoothing=0.0, reduction="mean"
):
    loss, cache = _ref.cross_entropy_forward(
        logits,
        targets,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        reduction=reduction,
    )
    with np.errstate(all="ignore"):
        e = np.exp(logits)
        p = e / e.sum(axis=-1, keepdims=True)
        kept = targets != ignore_index
        rows = -np.log(p[np.arange(len(targets)), np.where(kept, targets, 0)])
        rows = np.where(kept, rows, 0).astype(logits.dtype)
    if reduction == "none":
        return rows, cache
    total = rows.sum(dtype=logits.dtype)
    if reduction == "sum":
        return np.asarray(total), cache
    return np.asarray(total / max(int(kept.sum()), 1), dtype=logits.dtype), cache
