"""Mutant: label smoothing spreads e over the V - 1 wrong classes (the seed's
convention) instead of PyTorch's e / V over all V classes.

With e' = e V / (V - 1), PyTorch's target (1 - e' + e'/V, e'/V) equals
(1 - e, e / (V - 1)), so the reference computes the mutant's loss exactly.
"""

from cllm_numpy import losses as _ref

from conformance.mutants._base import *  # noqa: F403

name = "mutant-ce-smoothing-v-minus-1"


def cross_entropy_forward(  # type: ignore[no-untyped-def]
    logits, targets, *, ignore_index=-100, label_smoothing=0.0, reduction="mean"
):
    v = logits.shape[-1] if getattr(logits, "ndim", 0) else 1
    if v > 1 and 0.0 < label_smoothing:
        label_smoothing = min(1.0, label_smoothing * v / (v - 1))
    return _ref.cross_entropy_forward(
        logits,
        targets,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        reduction=reduction,
    )
