"""Conformance of multi-head attention, forward (``mha_forward``).

Spec: ``cllm_spec.attention``. The layer against the float64 reference and
against ``composed_mha``, a per-head composition that shares no head-splitting
code with any backend. ``test_seedNN_*`` are the equivalents of test NN of the
original ``tests/unit/test_attention.c``; ``test_bug12_*`` are regressions for
the original's multi-head bugs (stride, no causal mask, no output projection).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from conformance.attention_helpers import mha_params, slow_attention, up
from conformance.strategies import EDGE_SIZES, as_oracle, normal


def composed_mha(attend, x, w_qkv, b_qkv, w_proj, b_proj, n_head):
    """MHA rebuilt from explicit column slices and one single-head call per head.

    It shares no head-splitting code with any backend, so a stride error in a
    backend's split or merge shows up as a mismatch.
    """
    c = x.shape[-1]
    hs = c // n_head
    qkv = x @ w_qkv.T + (0.0 if b_qkv is None else b_qkv)
    heads = []
    for h in range(n_head):
        cols = slice(h * hs, (h + 1) * hs)
        q = qkv[:, :, 0:c][:, :, cols][:, None]
        k = qkv[:, :, c : 2 * c][:, :, cols][:, None]
        v = qkv[:, :, 2 * c : 3 * c][:, :, cols][:, None]
        heads.append(attend(q, k, v)[:, 0])
    a = np.concatenate(heads, axis=-1)
    return a @ w_proj.T + (0.0 if b_proj is None else b_proj)


def identity_qkv(c: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    eye = np.eye(c, dtype=dtype)
    return np.concatenate([eye, eye, eye]), eye


# ------------------------- vs the reference and a per-head composition -----
@pytest.mark.parametrize("t", EDGE_SIZES)
def test_mha_forward_matches_oracle_over_T(backend, dtype, oracle, rng, check, t):
    x = normal(rng, (2, t, 8), dtype)
    params = mha_params(rng, 8, dtype)
    y, _, kv = backend.mha_forward(x, *params, n_head=2)
    ref, _, _ = oracle.mha_forward(*up(x, *params), n_head=2)
    assert kv is None
    check.close(y, ref, output="mha_forward", dtype=dtype)


@pytest.mark.parametrize("c", EDGE_SIZES)
def test_mha_forward_matches_oracle_over_C(backend, dtype, oracle, rng, check, c):
    n_head = 3 if c % 3 == 0 else 1
    x = normal(rng, (2, 5, c), dtype)
    params = mha_params(rng, c, dtype)
    y, _, _ = backend.mha_forward(x, *params, n_head=n_head)
    ref, _, _ = oracle.mha_forward(*up(x, *params), n_head=n_head)
    check.close(y, ref, output="mha_forward", dtype=dtype)


def test_reference_mha_matches_loop_composition(oracle, rng, check):
    x = normal(rng, (2, 4, 6), np.float64)
    params = mha_params(rng, 6, np.float64)
    y, _, _ = oracle.mha_forward(x, *params, n_head=3)
    want = composed_mha(lambda q, k, v: slow_attention(q, k, v, True), x, *params, 3)
    check.close(y, want, output="slow_oracle")


@pytest.mark.parametrize(("c", "n_head"), [(6, 3), (8, 4), (12, 2)])
def test_bug12_mha_equals_per_head_composition(
    backend, dtype, oracle, rng, check, c, n_head
):
    x = normal(rng, (2, 5, c), dtype)
    params = mha_params(rng, c, dtype)
    y, _, _ = backend.mha_forward(x, *params, n_head=n_head)

    def attend(q, k, v):
        return oracle.attention_forward(q, k, v, causal=True)[0]

    want = composed_mha(attend, *up(x, *params), n_head)
    check.close(y, want, output="mha_forward", dtype=dtype)


# ----------------------------------------- heads, causality, projection ----
def test_bug12_two_heads_identity_weights_golden(backend, dtype, check):
    # C = 2, NH = 2 (HS = 1, scale 1), w_qkv = [I; I; I], w_proj = I: head h sees
    # q = k = v = x[:, h]. x = [[0, 2], [1, 0]].
    # head 0: q=k=v=[0, 1]. t0: v_0 = 0. t1: s = [1*0, 1*1] -> out = e/(1+e).
    # head 1: q=k=v=[2, 0]. t0: v_0 = 2. t1: q = 0 -> uniform -> (2 + 0)/2 = 1.
    w_qkv, w_proj = identity_qkv(2, dtype)
    x = np.array([[[0.0, 2.0], [1.0, 0.0]]], dtype)
    y, _, _ = backend.mha_forward(x, w_qkv, None, w_proj, None, n_head=2)
    e = math.e
    check.close(
        y, np.array([[[0.0, 2.0], [e / (1 + e), 1.0]]]), output="golden", dtype=dtype
    )


def test_bug12_heads_do_not_mix(backend, dtype, rng, check):
    # with w_proj = I, y is the merged head output a; changing the q, k, v weight
    # rows of head 1 must leave head 0's channels untouched, bit for bit
    c, hs = 6, 3
    x = normal(rng, (2, 4, c), dtype)
    w_qkv, _, _, _ = mha_params(rng, c, dtype)
    eye = np.eye(c, dtype=dtype)
    y0, _, _ = backend.mha_forward(x, w_qkv, None, eye, None, n_head=2)
    w2 = w_qkv.copy()
    for block in range(3):
        rows = slice(block * c + hs, block * c + 2 * hs)
        w2[rows] = normal(rng, (hs, c), dtype)
    y1, _, _ = backend.mha_forward(x, w2, None, eye, None, n_head=2)
    check.exact(y1[..., :hs], y0[..., :hs], output="head0_unchanged")
    assert not np.array_equal(y1[..., hs:], y0[..., hs:])


@pytest.mark.parametrize("t_change", [1, 3, 5])
def test_bug12_causality_future_x_leaves_past_outputs_bitwise(
    backend, dtype, rng, check, t_change
):
    x = normal(rng, (2, 6, 8), dtype)
    params = mha_params(rng, 8, dtype)
    y0, _, _ = backend.mha_forward(x, *params, n_head=2)
    x2 = x.copy()
    x2[:, t_change:] = normal(rng, x2[:, t_change:].shape, dtype, 10.0)
    y1, _, _ = backend.mha_forward(x2, *params, n_head=2)
    check.exact(y1[:, :t_change], y0[:, :t_change], output="past_outputs")
    assert not np.allclose(y1[:, t_change:], y0[:, t_change:])


def test_bug12_output_projection_is_applied(backend, dtype, rng, check):
    # y(W, b) = y(I, None) W^T + b: the output projection is a real linear map
    c = 6
    x = normal(rng, (2, 4, c), dtype)
    w_qkv, b_qkv, w_proj, b_proj = mha_params(rng, c, dtype)
    a, _, _ = backend.mha_forward(
        x, w_qkv, b_qkv, np.eye(c, dtype=dtype), None, n_head=2
    )
    y, _, _ = backend.mha_forward(x, w_qkv, b_qkv, w_proj, b_proj, n_head=2)
    want = a.astype(np.float64) @ w_proj.T.astype(np.float64) + b_proj
    check.close(y, want, output="mha_forward", dtype=dtype)


# ------------------------------------------ the original's Day-10 tests ----
def test_seed03_single_head_identity_weights(backend, dtype, rng, check):
    # original single_head (1 head, HS 8, seq 4, identity weights):
    # y = attention(x, x, x)
    x = normal(rng, (1, 4, 8), dtype)
    w_qkv, w_proj = identity_qkv(8, dtype)
    y, _, _ = backend.mha_forward(x, w_qkv, None, w_proj, None, n_head=1)
    x64 = as_oracle(x)[0][:, None]
    check.close(
        y, slow_attention(x64, x64, x64, True)[:, 0], output="golden", dtype=dtype
    )
    assert np.any(y != 0.0)


def test_seed04_multi_head_patterned_weights_match_oracle(
    backend, dtype, oracle, rng, check
):
    # original multi_head (4 heads, HS 16, seq 8, patterned weights)
    c = 64
    i, j = np.meshgrid(np.arange(3 * c), np.arange(c), indexing="ij")
    w_qkv = (np.sin(0.37 * i + 0.11 * j) / math.sqrt(c)).astype(dtype)
    w_proj = (np.cos(0.23 * i[:c] - 0.07 * j[:c]) / math.sqrt(c)).astype(dtype)
    x = normal(rng, (2, 8, c), dtype)
    y, _, _ = backend.mha_forward(x, w_qkv, None, w_proj, None, n_head=4)
    ref, _, _ = oracle.mha_forward(*up(x, w_qkv, None, w_proj, None), n_head=4)
    check.close(y, ref, output="mha_forward", dtype=dtype)


def test_seed06_output_shapes(backend, dtype, rng):
    # original output_shape (8 heads, HS 64, seq 32): every output and cache shape
    c, t = 512, 32
    x = normal(rng, (1, t, c), dtype, 0.1)
    params = mha_params(rng, c, dtype)
    y, cache, kv = backend.mha_forward(x, *params, n_head=8)
    assert y.shape == (1, t, c) and kv is None
    assert cache.attn.q.shape == (1, 8, t, 64) and cache.attn.att.shape == (1, 8, t, t)
    grads = backend.mha_backward(y, cache)
    assert [g.shape for g in grads] == [(1, t, c), (3 * c, c), (3 * c,), (c, c), (c,)]


def test_seed07_large_inputs_small_weights_match_oracle(
    backend, dtype, oracle, rng, check
):
    # original numerical_stability: inputs 100, weights 0.01 (scores of order 10)
    x = np.full((2, 6, 8), 100.0, dtype) + normal(rng, (2, 6, 8), dtype)
    w_qkv = np.full((24, 8), 0.01, dtype) + normal(rng, (24, 8), dtype, 0.01)
    w_proj = np.full((8, 8), 0.01, dtype)
    y, _, _ = backend.mha_forward(x, w_qkv, None, w_proj, None, n_head=2)
    ref, _, _ = oracle.mha_forward(*up(x, w_qkv, None, w_proj, None), n_head=2)
    check.close(y, ref, output="mha_forward", dtype=dtype)


def test_seed08_zero_input_gives_the_bias_path_exactly(backend, dtype, rng, check):
    # original zero_input: x = 0 makes every token's q, k, v the bias, so every
    # output row is b_v w_proj^T + b_proj; without biases it is exactly 0
    c = 6
    w_qkv, b_qkv, w_proj, b_proj = mha_params(rng, c, dtype)
    x = np.zeros((2, 5, c), dtype)
    y, _, _ = backend.mha_forward(x, w_qkv, b_qkv, w_proj, b_proj, n_head=2)
    b_v = b_qkv[2 * c :].astype(np.float64)
    want = np.broadcast_to(b_v @ w_proj.T.astype(np.float64) + b_proj, y.shape)
    check.close(y, want, output="golden", dtype=dtype)
    y0, _, _ = backend.mha_forward(x, w_qkv, None, w_proj, None, n_head=2)
    check.exact(y0, np.zeros_like(y0), output="zero_input")


def test_seed09_single_token_is_the_value_projection(backend, dtype, rng, check):
    # original single_token: with T = 1 the only weight is 1, so
    # y = (x w_v^T + b_v) w_proj^T + b_proj whatever q and k are
    c = 6
    x = normal(rng, (3, 1, c), dtype)
    w_qkv, b_qkv, w_proj, b_proj = mha_params(rng, c, dtype)
    y, _, _ = backend.mha_forward(x, w_qkv, b_qkv, w_proj, b_proj, n_head=3)
    x64, w64, b64, wp64 = up(x, w_qkv, b_qkv, w_proj)
    want = (x64 @ w64[2 * c :].T + b64[2 * c :]) @ wp64.T + b_proj
    check.close(y, want, output="golden", dtype=dtype)


def test_seed10_long_sequence_matches_oracle(backend, dtype, oracle, rng, check):
    # original long_sequence (8 heads, HS 64, seq 128)
    c, t = 512, 128
    x = normal(rng, (1, t, c), dtype)
    params = mha_params(rng, c, dtype)
    y, _, _ = backend.mha_forward(x, *params, n_head=8)
    ref, _, _ = oracle.mha_forward(*up(x, *params), n_head=8)
    check.close(y, ref, output="mha_forward", dtype=dtype)


@pytest.mark.parametrize("hs", [32, 64, 128])
def test_seed11_head_sizes(backend, dtype, oracle, rng, check, hs):
    x = normal(rng, (1, 5, 2 * hs), dtype)
    params = mha_params(rng, 2 * hs, dtype)
    y, cache, _ = backend.mha_forward(x, *params, n_head=2)
    ref, _, _ = oracle.mha_forward(*up(x, *params), n_head=2)
    assert cache.attn.q.shape[-1] == hs
    check.close(y, ref, output="mha_forward", dtype=dtype)


@pytest.mark.parametrize("n_head", [1, 8, 16])
def test_seed12_head_counts(backend, dtype, oracle, rng, check, n_head):
    c = 4 * n_head
    x = normal(rng, (1, 5, c), dtype)
    params = mha_params(rng, c, dtype)
    y, cache, _ = backend.mha_forward(x, *params, n_head=n_head)
    ref, _, _ = oracle.mha_forward(*up(x, *params), n_head=n_head)
    assert cache.n_head == n_head and cache.attn.q.shape[1] == n_head
    check.close(y, ref, output="mha_forward", dtype=dtype)
