"""Inputs and an independent loop oracle shared by the attention conformance files.

``slow_attention`` is attention written from the formula, by explicit loops,
independently of any backend: it checks the float64 reference itself, and
backends on tiny shapes.
"""

from __future__ import annotations

import math

import numpy as np

from conformance.strategies import as_oracle, normal


def slow_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    causal: bool,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Attention by explicit loops over b, h, i, j in float64 (tiny shapes only).

    Written from the formula, independently of any backend: a query sees key j
    when j <= i + (Tk - Tq) (if causal) and mask[b, j]; a query that sees no key
    gives zeros.
    """
    n_b, n_h, tq, hs = q.shape
    tk = k.shape[2]
    out = np.zeros((n_b, n_h, tq, hs))
    for b in range(n_b):
        for h in range(n_h):
            for i in range(tq):
                seen = [
                    j
                    for j in range(tk)
                    if (not causal or j <= i + tk - tq) and (mask is None or mask[b, j])
                ]
                if not seen:
                    continue
                scores = [
                    math.fsum(
                        float(q[b, h, i, d]) * float(k[b, h, j, d]) for d in range(hs)
                    )
                    / math.sqrt(hs)
                    for j in seen
                ]
                top = max(scores)
                weights = [math.exp(s - top) for s in scores]
                total = math.fsum(weights)
                for j, w in zip(seen, weights, strict=True):
                    for d in range(hs):
                        out[b, h, i, d] += w / total * float(v[b, h, j, d])
    return out


def qkv_inputs(rng, shape_q, tk, dtype):
    b, nh, _, hs = shape_q
    q = normal(rng, shape_q, dtype)
    k = normal(rng, (b, nh, tk, hs), dtype)
    v = normal(rng, (b, nh, tk, hs), dtype)
    return q, k, v


def mha_params(rng, c, dtype, bias=True):
    """w_qkv, b_qkv, w_proj, b_proj scaled like a trained layer (O(1) outputs)."""
    s = 1.0 / math.sqrt(c)
    w_qkv = normal(rng, (3 * c, c), dtype, s)
    w_proj = normal(rng, (c, c), dtype, s)
    b_qkv = normal(rng, (3 * c,), dtype, 0.1) if bias else None
    b_proj = normal(rng, (c,), dtype, 0.1) if bias else None
    return w_qkv, b_qkv, w_proj, b_proj


def up(*arrays):
    """as_oracle that lets None through (absent biases)."""
    return [None if a is None else as_oracle(a)[0] for a in arrays]


def good_mha(dtype=np.float32, c=6):
    rng = np.random.default_rng(1)
    return [normal(rng, (2, 3, c), dtype), *mha_params(rng, c, dtype)]
