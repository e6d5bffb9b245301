"""Mutant: layer norm divides by the unbiased variance (C - 1) instead of C."""

import numpy as np
from cllm_numpy import ffn as _ref

from conformance.mutants._base import *  # noqa: F403

name = "mutant-layernorm-unbiased"


def layernorm_forward(x, weight, bias, eps=1e-5):  # type: ignore[no-untyped-def]
    y, cache = _ref.layernorm_forward(x, weight, bias, eps)
    c = x.shape[-1]
    if c < 2:
        return y, cache
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).sum(axis=-1, keepdims=True) / (c - 1)
    y = ((x - mu) / np.sqrt(var + eps) * weight + bias).astype(x.dtype)
    return y, cache
