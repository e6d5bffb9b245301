"""Mutant: the C backend whose cross-entropy forward writes the logits'
gradient without the mean's 1/count (csrc/losses.c, the forward that writes
d loss / d logits in place of the probabilities): every gradient of a step
would come out count times too large."""

from types import SimpleNamespace

import numpy as np
from cllm_c import *  # noqa: F403
from cllm_c import build_info, dtypes, version  # noqa: F401
from cllm_c import model_kernels as _real

name = "mutant-ce-grad-forward-unscaled"


def _cross_entropy_forward(logits, targets, **kwargs):  # type: ignore[no-untyped-def]
    value, cache = _real.cross_entropy_forward(logits, targets, **kwargs)
    counted = cache.weight != 0
    cache.probs[counted] /= cache.weight[counted, np.newaxis]  # the planted mistake
    return value, cache


model_kernels = SimpleNamespace(**{n: getattr(_real, n) for n in _real.__all__})
model_kernels.cross_entropy_forward = _cross_entropy_forward
