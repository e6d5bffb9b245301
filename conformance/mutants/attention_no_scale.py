"""Mutant: attention scores are q.k without the 1/sqrt(HS) scale."""

import numpy as np
from cllm_numpy import attention as _ref

from conformance.mutants._base import *  # noqa: F403

name = "mutant-attention-no-scale"


def attention_forward(q, k, v, *, causal=True, key_padding_mask=None):  # type: ignore[no-untyped-def]
    # Pre-multiplying q by sqrt(HS) cancels the reference's 1/sqrt(HS).
    boost = np.sqrt(q.shape[-1]).astype(q.dtype) if q.ndim else 1.0
    return _ref.attention_forward(
        q * boost, k, v, causal=causal, key_padding_mask=key_padding_mask
    )
