"""Mutant: the C backend whose feed-forward backward leaves the activation's
gradient off the rows past the last whole 12-row tile, as a GEMM epilogue
that ran only on whole tiles (csrc/gemm.c tile) would: those rows of dh are
the projection's input gradient as it is, not through the activation."""

import numpy as np
from cllm_c import *  # noqa: F403
from cllm_c import activation_backward, build_info, dtypes, linear_backward, version  # noqa: F401
from cllm_c import ffn_backward as _real_ffn_backward

name = "mutant-ffn-act-skips-edge-rows"

_TILE_ROWS = 12


def ffn_backward(dy, cache):  # type: ignore[no-untyped-def]
    grads = _real_ffn_backward(dy, cache)
    if np.asarray(dy).dtype != np.float32:
        return grads
    da, _, _ = linear_backward(dy, cache.proj)
    dh = np.array(activation_backward(da, cache.act))
    rows, flat_da = dh.reshape(-1, dh.shape[-1]), da.reshape(-1, da.shape[-1])
    whole = len(rows) - len(rows) % _TILE_ROWS
    rows[whole:] = flat_da[whole:]  # the planted mistake
    dx, dw_fc, db_fc = linear_backward(dh, cache.fc)
    return dx, dw_fc, db_fc, grads[3], grads[4]
