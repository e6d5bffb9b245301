"""Mutant: the C backend's AVX-512 attention blocks (csrc/attention_blocks.c)
leave the key gradient without its 1/sqrt(HS), dk = ds^T q, as a
cllm_att_mix_t call for dk that passed no scale would; only at the shapes
the blocks take (T and HS multiples of 16), which the small shapes of the
other attention tests never reach."""

import cllm_c.attention as _attention
import numpy as np
from cllm_c import *  # noqa: F403
from cllm_c import build_info, dtypes, model_kernels, version  # noqa: F401

name = "mutant-attention-blocks-dk-unscaled"
_real_dqkv = _attention._attention_dqkv


def _dqkv_dk_unscaled(da, cache):  # type: ignore[no-untyped-def]
    dqkv = _real_dqkv(da, cache)
    c = da.shape[-1]
    if (
        da.dtype == np.float32
        and da.shape[1] % 16 == 0
        and (c // cache.n_head) % 16 == 0
    ):
        dqkv[..., c : 2 * c] /= np.float32(cache.attn.scale)  # the planted mistake
    return dqkv


_attention._attention_dqkv = _dqkv_dk_unscaled
