"""Conformance of the attention backwards (``attention_backward``, ``mha_backward``).

Spec: ``cllm_spec.attention``. Gradients against the float64 reference in every
dtype, against finite differences in float64, and their dtypes and absent bias
gradients.
"""

from __future__ import annotations

import numpy as np
import pytest

from cllm_spec.protocols import MHACache
from conformance.attention_helpers import mha_params, qkv_inputs, up
from conformance.gradcheck import needs_float64
from conformance.strategies import EDGE_SIZES, as_oracle, normal

F64 = np.dtype(np.float64)


# ------------------------------------------------ against the reference ----
@pytest.mark.parametrize("t", EDGE_SIZES)
@pytest.mark.parametrize("causal", [True, False])
def test_attention_backward_matches_oracle(
    backend, dtype, oracle, rng, check, t, causal
):
    q, k, v = qkv_inputs(rng, (2, 2, t, 3), t, dtype)
    dout = normal(rng, q.shape, dtype)
    _, cache = backend.attention_forward(q, k, v, causal=causal)
    grads = backend.attention_backward(dout, cache)
    _, ref_cache = oracle.attention_forward(*as_oracle(q, k, v), causal=causal)
    refs = oracle.attention_backward(as_oracle(dout)[0], ref_cache)
    for name, g, r in zip(("dq", "dk", "dv"), grads, refs, strict=True):
        check.close(g, r, output=f"attention_backward.{name}", dtype=dtype)


@pytest.mark.parametrize("t", EDGE_SIZES)
def test_mha_backward_matches_oracle(backend, dtype, oracle, rng, check, t):
    x = normal(rng, (2, t, 6), dtype)
    params = mha_params(rng, 6, dtype)
    dy = normal(rng, x.shape, dtype)
    _, cache, _ = backend.mha_forward(x, *params, n_head=3)
    grads = backend.mha_backward(dy, cache)
    _, ref_cache, _ = oracle.mha_forward(*up(x, *params), n_head=3)
    refs = oracle.mha_backward(as_oracle(dy)[0], ref_cache)
    names = ("dx", "dw_qkv", "db_qkv", "dw_proj", "db_proj")
    for name, g, r in zip(names, grads, refs, strict=True):
        check.close(g, r, output=f"mha_backward.{name}", dtype=dtype)


def test_outputs_and_gradients_keep_the_input_dtype(backend, dtype, rng):
    q, k, v = qkv_inputs(rng, (1, 2, 3, 2), 3, dtype)
    out, cache = backend.attention_forward(q, k, v)
    assert out.dtype == dtype and cache.att.dtype == dtype
    assert all(g.dtype == dtype for g in backend.attention_backward(out, cache))
    x = normal(rng, (1, 3, 4), dtype)
    params = mha_params(rng, 4, dtype)
    y, mcache, _ = backend.mha_forward(x, *params, n_head=2)
    assert y.dtype == dtype and isinstance(mcache, MHACache) and mcache.n_head == 2
    assert all(g.dtype == dtype for g in backend.mha_backward(y, mcache))


def test_mha_without_biases_returns_none_bias_gradients(backend, dtype, rng):
    x = normal(rng, (1, 3, 4), dtype)
    w_qkv, _, w_proj, _ = mha_params(rng, 4, dtype, bias=False)
    y, cache, _ = backend.mha_forward(x, w_qkv, None, w_proj, None, n_head=2)
    dx, dw_qkv, db_qkv, dw_proj, db_proj = backend.mha_backward(y, cache)
    assert db_qkv is None and db_proj is None
    assert dx.shape == x.shape and dw_qkv.shape == (12, 4) and dw_proj.shape == (4, 4)


# -------------------------------------------------- finite differences -----
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("with_mask", [False, True])
def test_attention_backward_gradcheck(backend, rng, check, causal, with_mask):
    needs_float64(backend)
    q, k, v = qkv_inputs(rng, (2, 2, 3, 2), 4, np.float64)
    mask = np.array([[True, False, True, True], [True, True, False, True]])
    mask = mask if with_mask else None
    dout = normal(rng, q.shape, np.float64)

    def f(q_, k_, v_):
        return backend.attention_forward(
            q_, k_, v_, causal=causal, key_padding_mask=mask
        )[0]

    _, cache = backend.attention_forward(q, k, v, causal=causal, key_padding_mask=mask)
    dq, dk, dv = backend.attention_backward(dout, cache)
    check.gradcheck(
        f, [q, k, v], dout, {0: dq, 1: dk, 2: dv}, output="attention_backward"
    )


def test_attention_backward_gradcheck_with_an_empty_row(backend, rng, check):
    needs_float64(backend)
    q, k, v = qkv_inputs(rng, (1, 1, 3, 2), 3, np.float64)
    mask = np.array([[False, True, True]])  # causal query 0 sees nothing
    dout = normal(rng, q.shape, np.float64)

    def f(q_, k_, v_):
        return backend.attention_forward(q_, k_, v_, key_padding_mask=mask)[0]

    _, cache = backend.attention_forward(q, k, v, key_padding_mask=mask)
    dq, dk, dv = backend.attention_backward(dout, cache)
    check.gradcheck(
        f, [q, k, v], dout, {0: dq, 1: dk, 2: dv}, output="attention_backward"
    )


@pytest.mark.parametrize("bias", [True, False])
def test_mha_backward_gradcheck(backend, rng, check, bias):
    needs_float64(backend)
    x = normal(rng, (2, 3, 4), np.float64)
    w_qkv, b_qkv, w_proj, b_proj = mha_params(rng, 4, np.float64, bias=bias)
    dy = normal(rng, x.shape, np.float64)
    _, cache, _ = backend.mha_forward(x, w_qkv, b_qkv, w_proj, b_proj, n_head=2)
    dx, dw_qkv, db_qkv, dw_proj, db_proj = backend.mha_backward(dy, cache)
    if bias:

        def f(*args):
            return backend.mha_forward(*args, n_head=2)[0]

        args = [x, w_qkv, b_qkv, w_proj, b_proj]
        grads = {0: dx, 1: dw_qkv, 2: db_qkv, 3: dw_proj, 4: db_proj}
    else:

        def f(*args):
            return backend.mha_forward(args[0], args[1], None, args[2], None, n_head=2)[
                0
            ]

        args = [x, w_qkv, w_proj]
        grads = {0: dx, 1: dw_qkv, 2: dw_proj}
    check.gradcheck(f, args, dy, grads, output="mha_backward")
