"""Mutant: the C backend's attention over the token layout (q, k, v read where
the QKV product left them) drops the head stride of q, k and v, so every head
attends with head 0's queries, keys and values: the original project's wrong
attention strides, in the fast path."""

import cllm_c.attention as _attention
from cllm_c import *  # noqa: F403
from cllm_c import build_info, dtypes, model_kernels, version  # noqa: F401

name = "mutant-attention-head-stride"
_layouts = _attention._token_layouts


def _head_stride_dropped(t, c, nh):  # type: ignore[no-untyped-def]
    (batch, _head, row), merged = _layouts(t, c, nh)
    return (batch, 0, row), merged  # the planted mistake


_attention._token_layouts = _head_stride_dropped
