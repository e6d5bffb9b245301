"""Conformance of attention at the shapes training runs.

Spec: ``cllm_spec.attention``. The other attention tests use head sizes and
sequence lengths around small edges; a backend may take another path where
both are multiples of its vector width (the C backend's AVX-512 blocks take
T and HS multiples of 16, csrc/attention_blocks.c). These run multi-head
attention forward and backward, and a causal attention with fewer queries
than keys, at such shapes, with a short last block of rows and head sizes
of one, two and three 16-float vectors, against the float64 reference.
"""

from __future__ import annotations

import numpy as np
import pytest

from cllm_spec.tolerances import tolerance
from conformance.attention_helpers import mha_params, up
from conformance.strategies import as_oracle, normal

#: (B, T, C, NH): HS = 16, 32, 48 and 64; T = 16 is one vector of keys, 80
#: ends on a half block, 128 is the production length; B * T <= 130 rows, as
#: the attention tolerances for the parameter gradients were measured with
MHA_SHAPES = (
    (2, 16, 32, 2),
    (2, 48, 64, 2),
    (2, 64, 128, 4),
    (1, 80, 96, 2),
    (1, 128, 128, 2),
)
#: (Tq, Tk, HS): a causal block of queries at the end of a longer key range;
#: at (23, 32) the first 8 queries' last sees 17 keys, one past a vector
CAUSAL_SHAPES = ((5, 32, 16), (23, 32, 16), (24, 64, 32), (64, 64, 48), (40, 96, 64))


def _close(check, got, want, output, dtype):
    """check.close with the attention component's tolerance for ``output``:
    these are its outputs, at other shapes"""
    tol = tolerance("attention", output, np.dtype(dtype))
    check.close(got, want, output=output, dtype=dtype, tol=tol)


@pytest.mark.parametrize(
    "shape", MHA_SHAPES, ids=lambda s: "b{}-t{}-c{}-nh{}".format(*s)
)
def test_mha_forward_and_backward_match_oracle_at_training_shapes(
    backend, dtype, oracle, rng, check, shape
):
    b, t, c, nh = shape
    x = normal(rng, (b, t, c), dtype)
    params = mha_params(rng, c, dtype)
    dy = normal(rng, x.shape, dtype)
    y, cache, _ = backend.mha_forward(x, *params, n_head=nh)
    grads = backend.mha_backward(dy, cache)
    ref, ref_cache, _ = oracle.mha_forward(*up(x, *params), n_head=nh)
    refs = oracle.mha_backward(as_oracle(dy)[0], ref_cache)
    _close(check, y, ref, "mha_forward", dtype)
    names = ("dx", "dw_qkv", "db_qkv", "dw_proj", "db_proj")
    for name, g, r in zip(names, grads, refs, strict=True):
        _close(check, g, r, f"mha_backward.{name}", dtype)


@pytest.mark.parametrize(
    "shape", CAUSAL_SHAPES, ids=lambda s: "tq{}-tk{}-hs{}".format(*s)
)
def test_causal_attention_with_fewer_queries_matches_oracle_at_training_shapes(
    backend, dtype, oracle, rng, check, shape
):
    tq, tk, hs = shape
    q = normal(rng, (2, 3, tq, hs), dtype)
    k, v = normal(rng, (2, 3, tk, hs), dtype), normal(rng, (2, 3, tk, hs), dtype)
    dout = normal(rng, q.shape, dtype)
    out, cache = backend.attention_forward(q, k, v, causal=True)
    grads = backend.attention_backward(dout, cache)
    ref, ref_cache = oracle.attention_forward(*as_oracle(q, k, v), causal=True)
    refs = oracle.attention_backward(as_oracle(dout)[0], ref_cache)
    _close(check, out, ref, "attention_forward", dtype)
    assert np.all(np.triu(cache.att[0, 0], k=tk - tq + 1) == 0), "a future key is seen"
    for name, g, r in zip(("dq", "dk", "dv"), grads, refs, strict=True):
        _close(check, g, r, f"attention_backward.{name}", dtype)
