"""Conformance of scaled dot-product attention, forward (``attention_forward``).

Spec: ``cllm_spec.attention``. Three kinds of evidence: the float64 reference
(the ``oracle`` fixture), the explicit loops of ``slow_attention`` (which also
check the reference), and hand-derived golden values; then the properties of
causality, the key padding mask and the softmax weights.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cllm_spec.protocols import AttentionCache
from conformance.attention_helpers import qkv_inputs, slow_attention
from conformance.strategies import EDGE_SIZES, FIXTURE_OK, as_oracle, normal


# -------------------------------------------- forward vs the reference -----
@pytest.mark.parametrize("t", EDGE_SIZES)
def test_attention_forward_matches_oracle_over_T(backend, dtype, oracle, rng, check, t):
    q, k, v = qkv_inputs(rng, (2, 2, t, 4), t, dtype)
    out, _ = backend.attention_forward(q, k, v, causal=True)
    ref, _ = oracle.attention_forward(*as_oracle(q, k, v), causal=True)
    check.close(out, ref, output="attention_forward", dtype=dtype)


@pytest.mark.parametrize("hs", EDGE_SIZES)
def test_attention_forward_matches_oracle_over_HS(
    backend, dtype, oracle, rng, check, hs
):
    q, k, v = qkv_inputs(rng, (1, 3, 5, hs), 5, dtype)
    out, _ = backend.attention_forward(q, k, v, causal=True)
    ref, _ = oracle.attention_forward(*as_oracle(q, k, v), causal=True)
    check.close(out, ref, output="attention_forward", dtype=dtype)


@pytest.mark.parametrize(
    ("tq", "tk", "causal"),
    [(1, 7, True), (3, 17, True), (16, 17, True), (7, 3, False), (15, 16, False)],
)
def test_attention_forward_cross_lengths_with_mask_match_oracle(
    backend, dtype, oracle, rng, check, tq, tk, causal
):
    q, k, v = qkv_inputs(rng, (2, 2, tq, 3), tk, dtype)
    mask = rng.random((2, tk)) < 0.7
    out, _ = backend.attention_forward(q, k, v, causal=causal, key_padding_mask=mask)
    ref, _ = oracle.attention_forward(
        *as_oracle(q, k, v), causal=causal, key_padding_mask=mask
    )
    check.close(out, ref, output="attention_forward", dtype=dtype)


# ------------------------------ the independent loop oracle --------------
@st.composite
def attention_case(draw):
    b, nh = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    tk, hs = draw(st.integers(1, 5)), draw(st.integers(1, 3))
    causal = draw(st.booleans())
    tq = draw(st.integers(1, tk)) if causal else draw(st.integers(1, 5))
    use_mask = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    return b, nh, tq, tk, hs, causal, use_mask, seed


@FIXTURE_OK
@given(case=attention_case())
def test_reference_matches_slow_loops(oracle, check, case):
    b, nh, tq, tk, hs, causal, use_mask, seed = case
    rng = np.random.default_rng(seed)
    q, k, v = qkv_inputs(rng, (b, nh, tq, hs), tk, np.float64)
    mask = rng.random((b, tk)) < 0.6 if use_mask else None
    out, _ = oracle.attention_forward(q, k, v, causal=causal, key_padding_mask=mask)
    check.close(out, slow_attention(q, k, v, causal, mask), output="slow_oracle")


@FIXTURE_OK
@given(case=attention_case())
def test_backend_matches_slow_loops(backend, dtype, check, case):
    b, nh, tq, tk, hs, causal, use_mask, seed = case
    rng = np.random.default_rng(seed)
    q, k, v = qkv_inputs(rng, (b, nh, tq, hs), tk, dtype)
    mask = rng.random((b, tk)) < 0.6 if use_mask else None
    out, _ = backend.attention_forward(q, k, v, causal=causal, key_padding_mask=mask)
    ref = slow_attention(*as_oracle(q, k, v), causal, mask)
    check.close(out, ref, output="attention_forward", dtype=dtype)


# --------------------------------------------------------- goldens ---------
# The original's probe: 1 head, HS = 2, q = k = v = [[3,0],[0,0],[-3,0]].
# Scores s_ij = q_i . k_j / sqrt(2). Non-causal:
#   row 0: s = [9, 0, -9]/sqrt(2) = [a, 0, -a] with a = 9/sqrt(2) = 6.36396...
#          out_0 = (3 e^a + 0 - 3 e^-a) / (e^a + 1 + e^-a) = 6 sinh(a) / (1 + 2 cosh(a))
#               = 2.9948235387503...  (the original returned 38.18: negative weights)
#   row 1: q = 0 -> s = [0, 0, 0] -> uniform -> mean of v = [0, 0]
#   row 2: s = [-a, 0, a] -> mirror image of row 0 -> -2.99482...
# Causal (query i sees keys 0..i):
#   row 0: only key 0 -> v_0 = [3, 0];  row 1: s = [0, 0] -> (v_0 + v_1)/2 = [1.5, 0]
#   row 2: sees all three keys -> same as non-causal row 2 = [-2.99482..., 0]
PROBE = np.array([[3.0, 0.0], [0.0, 0.0], [-3.0, 0.0]])
_A = 9.0 / math.sqrt(2.0)
PROBE_C = 6.0 * math.sinh(_A) / (1.0 + 2.0 * math.cosh(_A))  # 2.99482353875...


def test_slow_oracle_reproduces_the_hand_derived_probe(check):
    p = PROBE[None, None]
    want = np.array([[PROBE_C, 0.0], [0.0, 0.0], [-PROBE_C, 0.0]])[None, None]
    check.close(slow_attention(p, p, p, False), want, output="slow_oracle")
    assert abs(PROBE_C - 2.9948235387503) < 1e-12


@pytest.mark.parametrize(
    ("causal", "rows"),
    [
        (False, [[PROBE_C, 0.0], [0.0, 0.0], [-PROBE_C, 0.0]]),
        (True, [[3.0, 0.0], [1.5, 0.0], [-PROBE_C, 0.0]]),
    ],
)
def test_original_probe_golden(backend, dtype, check, causal, rows):
    p = PROBE[None, None].astype(dtype)
    out, cache = backend.attention_forward(p, p, p, causal=causal)
    check.close(out, np.array(rows)[None, None], output="golden", dtype=dtype)
    assert np.all(cache.att >= 0.0), "softmax weights are never negative"


# q . k_1 = HS for q = k_1 = ones(HS), k_0 = 0, v_0 = 0, v_1 = ones: the weight of
# key 1 is sigmoid(HS * scale) = sigmoid(sqrt(HS)) only with scale = 1/sqrt(HS)
# (1/HS would give sigmoid(1), no scale sigmoid(HS)).
#   sigmoid(1) = 0.7310585786300049, sigmoid(2) = 0.8807970779778823,
#   sigmoid(4) = 0.9820137900379085
@pytest.mark.parametrize(
    ("hs", "want"),
    [(1, 0.7310585786300049), (4, 0.8807970779778823), (16, 0.9820137900379085)],
)
def test_scale_is_inverse_sqrt_head_size_golden(backend, dtype, check, hs, want):
    q = np.ones((1, 1, 1, hs), dtype)
    k = np.stack([np.zeros(hs), np.ones(hs)]).astype(dtype)[None, None]
    out, cache = backend.attention_forward(q, k.copy(), k.copy(), causal=False)
    check.close(out, np.full((1, 1, 1, hs), want), output="golden", dtype=dtype)
    assert cache.scale == pytest.approx(1.0 / math.sqrt(hs))


def test_zero_queries_average_the_visible_values_golden(backend, dtype, rng, check):
    # q = 0 makes every score 0, so causal row i is the mean of v_0 .. v_i.
    q = np.zeros((2, 2, 6, 3), dtype)
    k, v = normal(rng, q.shape, dtype), normal(rng, q.shape, dtype)
    out, _ = backend.attention_forward(q, k, v, causal=True)
    v64 = v.astype(np.float64)
    want = np.cumsum(v64, axis=2) / np.arange(1, 7)[:, None]
    check.close(out, want, output="golden", dtype=dtype)


def test_huge_scores_are_stable_golden(backend, dtype, rng, check):
    # q = k = 100 I (HS = Tq = Tk = 4): s = 10000/2 = 5000 on the diagonal, 0 off it,
    # so att = I exactly (exp(-5000) underflows to 0) and out = v. A softmax
    # without the max shift would overflow exp(5000) to inf and give NaN.
    q = (100.0 * np.eye(4, dtype=dtype))[None, None]
    v = normal(rng, (1, 1, 4, 4), dtype)
    out, cache = backend.attention_forward(q, q.copy(), v, causal=False)
    check.close(cache.att, np.eye(4)[None, None], output="golden", dtype=dtype)
    check.close(out, v.astype(np.float64), output="golden", dtype=dtype)


# --------------------------------------------------- math properties -------
def test_multi_head_equals_independent_single_heads(backend, dtype, rng, check):
    q, k, v = qkv_inputs(rng, (2, 4, 5, 3), 5, dtype)
    out, _ = backend.attention_forward(q, k, v, causal=True)
    for h in range(4):
        one, _ = backend.attention_forward(
            q[:, h : h + 1].copy(), k[:, h : h + 1].copy(), v[:, h : h + 1].copy()
        )
        check.close(
            out[:, h : h + 1], one.astype(np.float64), output="per_head", dtype=dtype
        )


def test_causality_future_keys_and_values(backend, dtype, rng, check):
    q, k, v = qkv_inputs(rng, (1, 2, 5, 3), 5, dtype)
    out0, _ = backend.attention_forward(q, k, v, causal=True)
    k2, v2 = k.copy(), v.copy()
    k2[:, :, 3:] *= 7.0
    v2[:, :, 3:] += 5.0
    out1, _ = backend.attention_forward(q, k2, v2, causal=True)
    check.exact(out1[:, :, :3], out0[:, :, :3], output="past_outputs")
    assert not np.allclose(out1[:, :, 3:], out0[:, :, 3:])


def test_causal_shorter_queries_are_bottom_right_aligned(backend, dtype, rng, check):
    # the last Tq queries of a length-Tk causal pass, computed alone, must equal the
    # last Tq rows of the full pass (top-left alignment would hide keys 2..4)
    q, k, v = qkv_inputs(rng, (2, 2, 5, 3), 5, dtype)
    full, _ = backend.attention_forward(q, k, v, causal=True)
    tail, cache = backend.attention_forward(q[:, :, 3:].copy(), k, v, causal=True)
    check.close(
        tail, full[:, :, 3:].astype(np.float64), output="bottom_right", dtype=dtype
    )
    visible = cache.att[0, 0] > 0
    assert visible.tolist() == [[True] * 4 + [False], [True] * 5]


def test_single_query_causal_sees_every_key(backend, dtype, rng, check):
    q, k, v = qkv_inputs(rng, (1, 2, 1, 4), 6, dtype)
    causal, _ = backend.attention_forward(q, k, v, causal=True)
    free, _ = backend.attention_forward(q, k, v, causal=False)
    check.exact(causal, free, output="single_query")


def test_masked_keys_do_not_influence_the_output(backend, dtype, rng, check):
    q, k, v = qkv_inputs(rng, (2, 2, 4, 3), 6, dtype)
    mask = np.array(
        [[True, False, True, True, False, True], [False, True, True, False, True, True]]
    )
    out0, _ = backend.attention_forward(q, k, v, causal=False, key_padding_mask=mask)
    k2, v2 = k.copy(), v.copy()
    k2[~mask[:, None, :].repeat(2, 1)] = 50.0
    v2[~mask[:, None, :].repeat(2, 1)] = -50.0
    out1, _ = backend.attention_forward(q, k2, v2, causal=False, key_padding_mask=mask)
    check.exact(out1, out0, output="masked_keys")


def test_padding_mask_equals_dropping_the_keys(backend, dtype, oracle, rng, check):
    q, k, v = qkv_inputs(rng, (2, 2, 3, 4), 7, dtype)
    mask = np.array(
        [
            [True, True, False, True, False, False, True],
            [False, True, True, True, True, True, False],
        ]
    )
    out, _ = backend.attention_forward(q, k, v, causal=False, key_padding_mask=mask)
    for b in range(2):
        keep = np.flatnonzero(mask[b])
        sub, _ = oracle.attention_forward(
            *as_oracle(q[b : b + 1], k[b : b + 1, :, keep], v[b : b + 1, :, keep]),
            causal=False,
        )
        check.close(out[b : b + 1], sub, output="attention_forward", dtype=dtype)


def test_fully_masked_rows_output_zeros_and_get_zero_gradients(
    backend, dtype, rng, check
):
    # PyTorch >= 2.5 gives zeros too (older versions NaN): batch row 1 sees no key
    q, k, v = qkv_inputs(rng, (2, 2, 3, 4), 5, dtype)
    mask = np.array([[True, False, True, True, False], [False] * 5])
    out, cache = backend.attention_forward(q, k, v, causal=False, key_padding_mask=mask)
    assert np.all(np.isfinite(out))
    check.exact(out[1], np.zeros_like(out[1]), output="empty_rows")
    check.exact(cache.att[1], np.zeros_like(cache.att[1]), output="empty_rows_att")
    dq, dk, dv = backend.attention_backward(normal(rng, out.shape, dtype), cache)
    for g in (dq, dk, dv):
        assert np.all(np.isfinite(g))
        check.exact(g[1], np.zeros_like(g[1]), output="empty_rows_grad")


def test_causal_rows_whose_window_is_all_padding_are_zero(
    backend, dtype, oracle, rng, check
):
    # left padding: keys 0 and 1 are padding, so causal queries 0 and 1 see nothing
    q, k, v = qkv_inputs(rng, (1, 2, 5, 3), 5, dtype)
    mask = np.array([[False, False, True, True, True]])
    out, _ = backend.attention_forward(q, k, v, causal=True, key_padding_mask=mask)
    check.exact(out[:, :, :2], np.zeros_like(out[:, :, :2]), output="empty_rows")
    want = slow_attention(*as_oracle(q, k, v), True, mask)
    check.close(out, want, output="attention_forward", dtype=dtype)


def test_attention_weights_are_a_distribution_over_visible_keys(
    backend, dtype, rng, check
):
    q, k, v = qkv_inputs(rng, (2, 3, 4, 2), 6, dtype)
    mask = np.ones((2, 6), bool)
    mask[0, 5] = False
    _, cache = backend.attention_forward(q, k, v, causal=True, key_padding_mask=mask)
    assert isinstance(cache, AttentionCache) and cache.att.shape == (2, 3, 4, 6)
    check.close(cache.att.sum(-1), np.ones((2, 3, 4)), output="att_rows", dtype=dtype)
    # query i (absolute position 2 + i) sees keys j <= 2 + i, minus key 5 of row 0
    hidden = np.arange(6)[None, :] > np.arange(4)[:, None] + 2
    assert np.all(cache.att[:, :, hidden] == 0.0)
    assert np.all(cache.att[0, :, :, 5] == 0.0)
    assert np.all(cache.att[1][:, ~hidden] > 0.0)  # batch row 1 has no padding


def test_constant_values_pass_through(backend, dtype, rng, check):
    q, k, _ = qkv_inputs(rng, (2, 2, 5, 3), 5, dtype)
    v = np.full_like(k, 0.75)
    out, _ = backend.attention_forward(q, k, v, causal=True)
    check.close(out, np.full(out.shape, 0.75), output="convex_combination", dtype=dtype)


def test_adding_one_vector_to_every_key_changes_nothing(backend, dtype, rng, check):
    # s_ij + q_i . c is a per-row shift, and softmax ignores per-row shifts
    q, k, v = qkv_inputs(rng, (1, 2, 4, 3), 4, dtype)
    shift = normal(rng, (1, 2, 1, 3), dtype)
    out0, _ = backend.attention_forward(q, k, v, causal=True)
    out1, _ = backend.attention_forward(q, k + shift, v, causal=True)
    check.close(out1, out0.astype(np.float64), output="key_shift", dtype=dtype)


def test_noncausal_permutation_equivariance(backend, dtype, rng, check):
    q, k, v = qkv_inputs(rng, (1, 2, 4, 3), 6, dtype)
    keys = rng.permutation(6)
    queries = rng.permutation(4)
    out, _ = backend.attention_forward(q, k, v, causal=False)
    permuted, _ = backend.attention_forward(
        q[:, :, queries], k[:, :, keys], v[:, :, keys], causal=False
    )
    check.close(
        permuted,
        out[:, :, queries].astype(np.float64),
        output="permutation",
        dtype=dtype,
    )
