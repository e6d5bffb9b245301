"""Mutant: the causal mask lets position t also see position t + 1."""

import numpy as np
from cllm_numpy import attention as _ref

from cllm_spec.attention import validate_attention
from cllm_spec.protocols import AttentionCache
from conformance.mutants._base import *  # noqa: F403

name = "mutant-attention-causal-leak"


def attention_forward(q, k, v, *, causal=True, key_padding_mask=None):  # type: ignore[no-untyped-def]
    validate_attention(q, k, v, causal, key_padding_mask)
    if not causal:
        return _ref.attention_forward(
            q, k, v, causal=False, key_padding_mask=key_padding_mask
        )
    tq, tk = q.shape[-2], k.shape[-2]
    scale = 1.0 / np.sqrt(q.shape[-1])
    s = (q @ np.swapaxes(k, -1, -2)) * scale  # (B, NH, Tq, Tk)
    i = np.arange(tq)[:, None] + (tk - tq)
    visible = np.arange(tk)[None, :] <= i + 1  # the planted off-by-one
    if key_padding_mask is not None:
        visible = visible & key_padding_mask[:, None, None, :]
    s = np.where(visible, s, -np.inf)
    s = s - s.max(axis=-1, keepdims=True)
    e = np.exp(s)
    att = e / e.sum(axis=-1, keepdims=True)
    return att @ v, AttentionCache(q, k, v, att.astype(q.dtype), float(scale))
