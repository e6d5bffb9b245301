"""Conformance of attention, multi-head attention and the KV cache.

Spec: ``cllm_spec.attention``. Three kinds of evidence: the float64 reference
(the ``oracle`` fixture), an independent loop-by-loop implementation written
below (``slow_attention``) that checks the reference itself, and hand-derived
golden values. Tests named ``test_seedNN_*`` are the equivalents of test NN of
the original ``tests/unit/test_attention.c``; ``test_bug12_*`` are regressions
for the original's multi-head bugs (stride, no causal mask, no output
projection, a KV cache that overwrote fresh keys).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cllm_spec.errors import (
    CacheFullError,
    ConfigError,
    DTypeError,
    EmptyInputError,
    NonFiniteError,
    ReadOnlyError,
    ShapeError,
    Unsupported,
)
from cllm_spec.protocols import AttentionCache, KVCache, MHACache
from conformance.strategies import EDGE_SIZES, as_oracle, normal

F64 = np.dtype(np.float64)
FIXTURE_OK = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


# ------------------------------------------------------------ helpers ------
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


def need_float64(backend) -> None:
    if F64 not in {np.dtype(d) for d in backend.dtypes}:
        pytest.skip("finite differences need float64, which this backend lacks")


def identity_qkv(c: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    eye = np.eye(c, dtype=dtype)
    return np.concatenate([eye, eye, eye]), eye


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


def test_reference_mha_matches_loop_composition(oracle, rng, check):
    x = normal(rng, (2, 4, 6), np.float64)
    params = mha_params(rng, 6, np.float64)
    y, _, _ = oracle.mha_forward(x, *params, n_head=3)
    want = composed_mha(lambda q, k, v: slow_attention(q, k, v, True), x, *params, 3)
    check.close(y, want, output="slow_oracle")


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


# ------------------------------------------------------------ KV cache -----
def test_seed01_kv_cache_new_has_the_requested_shape(backend, dtype):
    # original layer_init(4, 64): the sizes are stored and the buffers exist
    cache = backend.kv_cache_new(2, 4, 16, 64, dtype)
    assert isinstance(cache, KVCache) and cache.length == 0
    for buf in (cache.k, cache.v):
        assert buf.shape == (2, 4, 16, 64) and buf.dtype == dtype
        assert not np.any(buf)
    assert not np.shares_memory(cache.k, cache.v)


def test_seed02_kv_cache_reset_empties_and_keeps_the_buffers(backend, dtype, rng):
    # original layer_free (pointers NULL): here the release is a reset to length 0
    cache = backend.kv_cache_new(1, 2, 5, 3, dtype)
    cache = backend.kv_cache_append(cache, *qkv_inputs(rng, (1, 2, 4, 3), 4, dtype)[1:])
    empty = backend.kv_cache_reset(cache)
    assert empty.length == 0
    assert empty.k is cache.k and empty.v is cache.v
    k = normal(rng, (1, 2, 5, 3), dtype)
    full = backend.kv_cache_append(empty, k, k)  # the whole capacity is free again
    assert full.length == 5


def test_kv_cache_append_writes_at_length(backend, dtype, rng, check):
    cache = backend.kv_cache_new(2, 2, 6, 3, dtype)
    k1, v1 = normal(rng, (2, 2, 2, 3), dtype), normal(rng, (2, 2, 2, 3), dtype)
    k2, v2 = normal(rng, (2, 2, 3, 3), dtype), normal(rng, (2, 2, 3, 3), dtype)
    c1 = backend.kv_cache_append(cache, k1, v1)
    snapshot = c1.k[:, :, :2].copy(), c1.v[:, :, :2].copy()
    c2 = backend.kv_cache_append(c1, k2, v2)
    assert (cache.length, c1.length, c2.length) == (0, 2, 5)
    assert np.shares_memory(c2.k, cache.k) and np.shares_memory(c2.v, cache.v)
    check.exact(c2.k[:, :, :5], np.concatenate([k1, k2], axis=2), output="kv.k")
    check.exact(c2.v[:, :, :5], np.concatenate([v1, v2], axis=2), output="kv.v")
    # the old tuple still describes a valid prefix
    check.exact(c1.k[:, :, : c1.length], snapshot[0], output="prefix.k")
    check.exact(c1.v[:, :, : c1.length], snapshot[1], output="prefix.v")


def test_kv_cache_full_raises_and_leaves_the_cache_unchanged(
    backend, dtype, rng, check
):
    cache = backend.kv_cache_new(1, 2, 4, 3, dtype)
    cache = backend.kv_cache_append(cache, *[normal(rng, (1, 2, 3, 3), dtype)] * 2)
    before = cache.k.copy(), cache.v.copy()
    with pytest.raises(CacheFullError):
        backend.kv_cache_append(cache, *[normal(rng, (1, 2, 2, 3), dtype)] * 2)
    assert cache.length == 3
    check.exact(cache.k, before[0], output="unchanged.k")
    check.exact(cache.v, before[1], output="unchanged.v")
    full = backend.kv_cache_append(cache, *[normal(rng, (1, 2, 1, 3), dtype)] * 2)
    assert full.length == 4  # filling it exactly is fine
    with pytest.raises(CacheFullError):
        backend.kv_cache_append(full, *[normal(rng, (1, 2, 1, 3), dtype)] * 2)


def decode(backend, x, params, n_head, chunks, cache):
    """Run mha_forward chunk by chunk through ``cache``; return outputs and cache."""
    outs, start = [], 0
    for n in chunks:
        y, _, cache = backend.mha_forward(
            x[:, start : start + n], *params, n_head=n_head, kv_cache=cache
        )
        start += n
        assert cache.length == start
        outs.append(y)
    return np.concatenate(outs, axis=1), cache


@pytest.mark.parametrize(
    "chunks", [(1, 1, 1, 1, 1, 1, 1), (3, 1), (2, 3, 2), (7,), (1, 6), (4, 1, 1, 1)]
)
def test_bug12_kv_decoding_equals_the_full_forward(
    backend, dtype, oracle, rng, check, chunks
):
    t, c, n_head = sum(chunks), 8, 2
    x = normal(rng, (2, t, c), dtype)
    params = mha_params(rng, c, dtype)
    want, _, _ = oracle.mha_forward(*up(x, *params), n_head=n_head)
    cache = backend.kv_cache_new(2, n_head, t + 2, c // n_head, dtype)
    got, cache = decode(backend, x, params, n_head, chunks, cache)
    check.close(got, want, output="kv_decoding", dtype=dtype)
    # the cache holds every position's keys: the k block of x w_qkv^T + b
    x64, w64, b64 = up(x, params[0], params[1])
    k_full = (x64 @ w64[c : 2 * c].T + b64[c : 2 * c]).reshape(2, t, n_head, -1)
    check.close(
        cache.k[:, :, :t], k_full.transpose(0, 2, 1, 3), output="kv_cache", dtype=dtype
    )


@pytest.mark.parametrize("hs", [1, 7, 8, 9, 17, 33])
def test_kv_decoding_of_a_batch_equals_the_full_forward_over_head_sizes(
    backend, dtype, oracle, rng, check, hs
):
    # decoding steps attend over a nonempty cache (a backend may do that in
    # place, straight from the QKV projection): three sequences, head sizes
    # around every SIMD width, a chunk of 2 and single tokens after a prefill
    n_head, chunks = 2, (3, 1, 2, 1, 1)
    t, c = sum(chunks), 2 * hs
    x = normal(rng, (3, t, c), dtype)
    params = mha_params(rng, c, dtype)
    want, _, _ = oracle.mha_forward(*up(x, *params), n_head=n_head)
    cache = backend.kv_cache_new(3, n_head, t + 1, hs, dtype)
    got, cache = decode(backend, x, params, n_head, chunks, cache)
    check.close(got, want, output="kv_decoding", dtype=dtype)
    x64, w64, b64 = up(x, params[0], params[1])
    v_full = (x64 @ w64[2 * c :].T + b64[2 * c :]).reshape(3, t, n_head, hs)
    check.close(
        cache.v[:, :, :t], v_full.transpose(0, 2, 1, 3), output="kv_cache", dtype=dtype
    )


def test_seed05_with_cache_second_call_equals_full_forward(
    backend, dtype, oracle, rng, check
):
    # original with_cache (2 heads, HS 32, seq 16): a second call through the cache
    t, c, n_head = 16, 64, 2
    x = normal(rng, (1, t, c), dtype)
    params = mha_params(rng, c, dtype)
    want, _, _ = oracle.mha_forward(*up(x, *params), n_head=n_head)
    cache = backend.kv_cache_new(1, n_head, t, c // n_head, dtype)
    got, _ = decode(backend, x, params, n_head, (8, 8), cache)
    check.close(got, want, output="kv_decoding", dtype=dtype)


def test_bug12_first_token_through_a_zero_cache_uses_its_own_keys(
    backend, dtype, rng, check
):
    # the original replaced fresh K/V by the (zero) cache contents; a zero-initialised
    # cache must not matter: the first decoded token equals the uncached T = 1 pass
    x = normal(rng, (2, 1, 6), dtype)
    params = mha_params(rng, 6, dtype)
    plain, _, _ = backend.mha_forward(x, *params, n_head=3)
    cache = backend.kv_cache_new(2, 3, 4, 2, dtype)
    cached, _, cache = backend.mha_forward(x, *params, n_head=3, kv_cache=cache)
    check.close(cached, plain.astype(np.float64), output="kv_decoding", dtype=dtype)
    assert np.any(cache.k[:, :, 0] != 0.0)


def test_mha_with_a_full_cache_raises_and_leaves_it_unchanged(
    backend, dtype, rng, check
):
    x = normal(rng, (1, 5, 4), dtype)
    params = mha_params(rng, 4, dtype)
    cache = backend.kv_cache_new(1, 2, 4, 2, dtype)
    _, cache = decode(backend, x[:, :3], params, 2, (3,), cache)
    before = cache.k.copy(), cache.v.copy()
    with pytest.raises(CacheFullError):
        backend.mha_forward(x[:, 3:], *params, n_head=2, kv_cache=cache)
    assert cache.length == 3
    check.exact(cache.k, before[0], output="unchanged.k")
    check.exact(cache.v, before[1], output="unchanged.v")


def test_seed13_kv_cache_reuse_after_reset_reproduces_decoding(
    backend, dtype, rng, check
):
    # original memory_cleanup: here, a cache emptied by reset is as good as new
    x, x_other = normal(rng, (1, 4, 6), dtype), normal(rng, (1, 3, 6), dtype)
    params = mha_params(rng, 6, dtype)
    fresh = backend.kv_cache_new(1, 2, 4, 3, dtype)
    first, _ = decode(backend, x, params, 2, (1, 1, 1, 1), fresh)
    used = backend.kv_cache_new(1, 2, 4, 3, dtype)
    _, used = decode(backend, x_other, params, 2, (3,), used)
    again, _ = decode(backend, x, params, 2, (1, 1, 1, 1), backend.kv_cache_reset(used))
    check.exact(again, first, output="after_reset")


def test_mha_backward_after_cached_prefix_is_unsupported(backend, dtype, rng):
    x = normal(rng, (1, 4, 4), dtype)
    params = mha_params(rng, 4, dtype)
    cache = backend.kv_cache_new(1, 2, 4, 2, dtype)
    _, _, cache = backend.mha_forward(x[:, :3], *params, n_head=2, kv_cache=cache)
    y, mcache, _ = backend.mha_forward(x[:, 3:], *params, n_head=2, kv_cache=cache)
    with pytest.raises(Unsupported):
        backend.mha_backward(np.ones_like(y), mcache)


def test_mha_backward_through_an_empty_cache_equals_training(
    backend, dtype, rng, check
):
    # an empty cache's forward is the training forward, so its backward is allowed
    x = normal(rng, (1, 3, 4), dtype)
    params = mha_params(rng, 4, dtype)
    dy = normal(rng, x.shape, dtype)
    _, train_cache, _ = backend.mha_forward(x, *params, n_head=2)
    _, kv_cache_run, _ = backend.mha_forward(
        x, *params, n_head=2, kv_cache=backend.kv_cache_new(1, 2, 3, 2, dtype)
    )
    for got, want in zip(
        backend.mha_backward(dy, kv_cache_run),
        backend.mha_backward(dy, train_cache),
        strict=True,
    ):
        check.exact(got, want, output="empty_cache_backward")


# -------------------------------------------------- finite differences -----
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("with_mask", [False, True])
def test_attention_backward_gradcheck(backend, rng, check, causal, with_mask):
    need_float64(backend)
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
    need_float64(backend)
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
    need_float64(backend)
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


# ---------------------------------------------------------- bad inputs -----
def good_qkv(dtype=np.float32):
    rng = np.random.default_rng(0)
    return qkv_inputs(rng, (2, 2, 3, 4), 3, dtype)


@pytest.mark.parametrize(
    "make",
    [
        lambda q, k, v: (q.astype(np.int32), k, v),
        lambda q, k, v: (q, k.astype(np.float16), v),
        lambda q, k, v: (q, k, v.astype(np.float64)),
        lambda q, k, v: (q.tolist(), k, v),
        lambda q, k, v: (None, k, v),
    ],
    ids=["int_q", "float16_k", "mixed_v", "list_q", "none_q"],
)
def test_attention_rejects_bad_dtypes(backend, make):
    with pytest.raises(DTypeError):
        backend.attention_forward(*make(*good_qkv()))


@pytest.mark.parametrize(
    "make",
    [
        lambda q, k, v: (q[0], k, v),
        lambda q, k, v: (q, k[None], v),
        lambda q, k, v: (q, k, v[..., 0]),
    ],
    ids=["q_rank3", "k_rank5", "v_rank3"],
)
def test_attention_rejects_bad_ranks(backend, make):
    with pytest.raises(ShapeError):
        backend.attention_forward(*make(*good_qkv()))


@pytest.mark.parametrize(
    "make",
    [
        lambda q, k, v: (q, k[:1], v),  # B
        lambda q, k, v: (q, k[:, :1], v),  # NH
        lambda q, k, v: (q, k[..., :3], v),  # HS of k
        lambda q, k, v: (q, k, v[:, :, :2]),  # Tk of v
        lambda q, k, v: (q, k, v[..., :3]),  # HS of v
    ],
    ids=["batch", "heads", "k_head_size", "v_length", "v_head_size"],
)
def test_attention_rejects_shape_mismatches(backend, make):
    with pytest.raises(ShapeError):
        backend.attention_forward(*make(*good_qkv()), causal=False)


def test_causal_attention_with_more_queries_than_keys_is_a_shape_error(backend, rng):
    q, k, v = qkv_inputs(rng, (1, 1, 4, 2), 3, np.float32)
    with pytest.raises(ShapeError):
        backend.attention_forward(q, k, v, causal=True)
    out, _ = backend.attention_forward(q, k, v, causal=False)  # fine without causal
    assert out.shape == q.shape


@pytest.mark.parametrize(
    ("mask", "error"),
    [
        (np.ones((2, 3), np.int32), DTypeError),
        (np.ones((2, 3), np.float32), DTypeError),
        (np.ones((2, 4), bool), ShapeError),
        (np.ones((1, 3), bool), ShapeError),
        (np.ones((2, 1, 3), bool), ShapeError),
    ],
    ids=["int", "float", "long", "short_batch", "rank3"],
)
def test_attention_rejects_bad_masks(backend, mask, error):
    with pytest.raises(error):
        backend.attention_forward(*good_qkv(), key_padding_mask=mask)


@pytest.mark.parametrize("axis", [0, 1, 2, 3])
def test_attention_rejects_empty_inputs(backend, axis):
    q, k, v = good_qkv()
    empty = [slice(None)] * 4
    empty[axis] = slice(0, 0)
    q, k, v = (a[tuple(empty)] for a in (q, k, v))
    with pytest.raises(EmptyInputError):
        backend.attention_forward(q, k, v)


@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_attention_rejects_non_finite_inputs(backend, which, bad):
    args = list(good_qkv())
    args[which] = args[which].copy()
    args[which][1, 0, 2, 1] = bad
    with pytest.raises(NonFiniteError):
        backend.attention_forward(*args)


@pytest.mark.parametrize("causal", [1, 0, "yes", None])
def test_attention_rejects_a_non_bool_causal_flag(backend, causal):
    with pytest.raises(ConfigError):
        backend.attention_forward(*good_qkv(), causal=causal)


def test_attention_backward_rejects_bad_dout(backend, rng):
    q, k, v = good_qkv()
    out, cache = backend.attention_forward(q, k, v)
    with pytest.raises(ShapeError):
        backend.attention_backward(out[:, :, :2], cache)
    with pytest.raises(DTypeError):
        backend.attention_backward(out.astype(np.float64), cache)
    bad = out.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(NonFiniteError):
        backend.attention_backward(bad, cache)
    with pytest.raises(DTypeError):
        backend.attention_backward(out, tuple(cache)[:4])


def good_mha(dtype=np.float32, c=6):
    rng = np.random.default_rng(1)
    return [normal(rng, (2, 3, c), dtype), *mha_params(rng, c, dtype)]


@pytest.mark.parametrize("n_head", [4, 5, 12])
def test_mha_rejects_channels_not_divisible_by_heads(backend, n_head):
    with pytest.raises(ShapeError):
        backend.mha_forward(*good_mha(), n_head=n_head)


@pytest.mark.parametrize("n_head", [0, -2, 2.0, True, None])
def test_mha_rejects_bad_head_counts(backend, n_head):
    with pytest.raises(ConfigError):
        backend.mha_forward(*good_mha(), n_head=n_head)


@pytest.mark.parametrize(
    ("index", "shape"),
    [(1, (6, 18)), (1, (18, 5)), (2, (12,)), (3, (6, 5)), (4, (5,)), (4, (1, 6))],
    ids=["w_qkv_transposed", "w_qkv_narrow", "b_qkv", "w_proj", "b_proj", "b_proj2d"],
)
def test_mha_rejects_bad_parameter_shapes(backend, index, shape):
    args = good_mha()
    args[index] = np.zeros(shape, np.float32)
    with pytest.raises(ShapeError):
        backend.mha_forward(*args, n_head=2)


@pytest.mark.parametrize("index", [0, 1, 2, 3, 4])
def test_mha_rejects_mixed_dtypes(backend, index):
    args = good_mha()
    args[index] = args[index].astype(np.float64)
    with pytest.raises(DTypeError):
        backend.mha_forward(*args, n_head=2)


def test_mha_rejects_bad_x(backend):
    x, *params = good_mha()
    with pytest.raises(DTypeError):
        backend.mha_forward(x.astype(np.int64), *params, n_head=2)
    with pytest.raises(ShapeError):
        backend.mha_forward(x[0], *params, n_head=2)
    with pytest.raises(EmptyInputError):
        backend.mha_forward(x[:, :0], *params, n_head=2)


@pytest.mark.parametrize("index", [0, 1, 2, 3, 4])
def test_mha_rejects_non_finite_inputs(backend, index):
    args = good_mha()
    args[index] = args[index].copy()
    args[index].reshape(-1)[3] = np.nan
    with pytest.raises(NonFiniteError):
        backend.mha_forward(*args, n_head=2)


def test_mha_backward_rejects_bad_dy(backend):
    y, cache, _ = backend.mha_forward(*good_mha(), n_head=2)
    with pytest.raises(ShapeError):
        backend.mha_backward(y[:, :2], cache)
    with pytest.raises(DTypeError):
        backend.mha_backward(y.astype(np.float64), cache)
    with pytest.raises(DTypeError):
        backend.mha_backward(y, cache.attn)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((0, 2, 4, 3, np.float32), ConfigError),
        ((1, -1, 4, 3, np.float32), ConfigError),
        ((1, 2, 2.5, 3, np.float32), ConfigError),
        ((1, 2, 4, True, np.float32), ConfigError),
        ((1, 2, 4, 3, np.int32), DTypeError),
        ((1, 2, 4, 3, np.float16), DTypeError),
        ((1, 2, 4, 3, "not a dtype"), DTypeError),
    ],
    ids=["batch0", "heads_neg", "tmax_float", "hs_bool", "int", "half", "garbage"],
)
def test_kv_cache_new_rejects_bad_arguments(backend, args, error):
    with pytest.raises(error):
        backend.kv_cache_new(*args)


@pytest.mark.parametrize(
    ("shape", "key_dtype", "error"),
    [
        ((1, 2, 1, 3), np.float64, DTypeError),
        ((2, 2, 1, 3), np.float32, ShapeError),
        ((1, 1, 1, 3), np.float32, ShapeError),
        ((1, 2, 1, 2), np.float32, ShapeError),
        ((2, 1, 3), np.float32, ShapeError),
        ((1, 2, 0, 3), np.float32, EmptyInputError),
    ],
    ids=["dtype", "batch", "heads", "head_size", "rank", "empty"],
)
def test_kv_cache_append_rejects_bad_keys(backend, shape, key_dtype, error):
    cache = backend.kv_cache_new(1, 2, 4, 3, np.float32)
    k = np.zeros(shape, key_dtype)
    with pytest.raises(error):
        backend.kv_cache_append(cache, k, k.copy())
    assert cache.length == 0


def read_only_buffers(kind: str, shape, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Two read-only (B, NH, T_max, HS) buffers of the kind named."""
    if kind == "bytes":  # the memory of an immutable bytes object
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return tuple(np.frombuffer(bytes(n), dtype).reshape(shape) for _ in range(2))
    k, v = np.zeros(shape, dtype), np.zeros(shape, dtype)
    if kind == "flag":
        k.flags.writeable = v.flags.writeable = False
    elif kind == "one":  # only v is read-only
        v.flags.writeable = False
    elif kind == "view":  # a read-only view of a writeable array
        k, v = np.lib.stride_tricks.as_strided(k, writeable=False), v[...]
        v.flags.writeable = False
    return k, v


READ_ONLY = ["bytes", "flag", "one", "view"]


@pytest.mark.parametrize("kind", READ_ONLY)
def test_kv_cache_append_refuses_read_only_buffers(backend, dtype, rng, kind):
    k_buf, v_buf = read_only_buffers(kind, (1, 2, 4, 3), dtype)
    before = k_buf.copy(), v_buf.copy()
    k = normal(rng, (1, 2, 2, 3), dtype)
    with pytest.raises(ReadOnlyError, match="read-only"):
        backend.kv_cache_append(KVCache(k_buf, v_buf, 0), k, k.copy())
    assert np.array_equal(k_buf, before[0]) and np.array_equal(v_buf, before[1])


@pytest.mark.parametrize("kind", READ_ONLY)
def test_mha_refuses_a_read_only_kv_cache(backend, dtype, kind):
    k_buf, v_buf = read_only_buffers(kind, (2, 2, 4, 3), dtype)
    before = k_buf.copy(), v_buf.copy()
    args = good_mha(dtype)
    with pytest.raises(ReadOnlyError, match="read-only"):
        backend.mha_forward(*args, n_head=2, kv_cache=KVCache(k_buf, v_buf, 1))
    assert np.array_equal(k_buf, before[0]) and np.array_equal(v_buf, before[1])


def test_kv_cache_reset_of_read_only_buffers_is_fine(backend, dtype):
    # reset writes nothing, so read-only buffers are no reason to refuse it
    k_buf, v_buf = read_only_buffers("bytes", (1, 2, 4, 3), dtype)
    assert backend.kv_cache_reset(KVCache(k_buf, v_buf, 2)).length == 0


def test_kv_cache_functions_reject_things_that_are_not_caches(backend):
    k = np.zeros((1, 2, 1, 3), np.float32)
    with pytest.raises(DTypeError):
        backend.kv_cache_append((k, k, 0), k, k)
    with pytest.raises(DTypeError):
        backend.kv_cache_reset(None)
    with pytest.raises(ShapeError):
        backend.kv_cache_append(
            KVCache(
                np.zeros((1, 2, 4, 3), np.float32),
                np.zeros((1, 2, 4, 3), np.float32),
                5,
            ),
            k,
            k,
        )


@pytest.mark.parametrize(
    ("cache_args", "error"),
    [
        ((2, 3, 4, 2, np.float32), ShapeError),  # NH 3 vs n_head 2
        ((2, 2, 4, 2, np.float32), ShapeError),  # HS 2 vs C / NH = 3
        ((1, 2, 4, 3, np.float32), ShapeError),  # B
        ((2, 2, 4, 3, np.float64), DTypeError),
    ],
    ids=["heads", "head_size", "batch", "dtype"],
)
def test_mha_rejects_a_mismatched_kv_cache(backend, cache_args, error):
    cache = backend.kv_cache_new(*cache_args)
    with pytest.raises(error):
        backend.mha_forward(*good_mha(), n_head=2, kv_cache=cache)
    assert cache.length == 0


def test_seed14_none_arguments_raise_typed_errors(backend):
    # original null_handling: NULL arguments must not crash; here they are typed errors
    x, w_qkv, b_qkv, w_proj, b_proj = good_mha()
    with pytest.raises(DTypeError):
        backend.mha_forward(None, w_qkv, b_qkv, w_proj, b_proj, n_head=2)
    with pytest.raises(DTypeError):
        backend.mha_forward(x, None, b_qkv, w_proj, b_proj, n_head=2)
    with pytest.raises(DTypeError):
        backend.mha_backward(x, None)
    with pytest.raises(DTypeError):
        backend.attention_backward(x, None)


# --------------------------------------------- determinism, no mutation ----
def test_seed15_repeated_calls_are_bitwise_identical(backend, dtype, rng, check):
    q, k, v = qkv_inputs(rng, (2, 2, 5, 3), 5, dtype)
    mask = rng.random((2, 5)) < 0.8
    dout = normal(rng, q.shape, dtype)
    runs = []
    for _ in range(2):
        out, cache = backend.attention_forward(q, k, v, key_padding_mask=mask)
        runs.append((out, *backend.attention_backward(dout, cache)))
    for a, b in zip(*runs, strict=True):
        check.exact(a, b, output="attention_determinism")
    x, *params = good_mha(dtype)
    mruns = []
    for _ in range(2):
        y, mcache, _ = backend.mha_forward(x, *params, n_head=3)
        mruns.append((y, *backend.mha_backward(y, mcache)))
    for a, b in zip(*mruns, strict=True):
        check.exact(a, b, output="mha_determinism")


def test_attention_does_not_mutate_its_inputs(backend, dtype, rng, check):
    q, k, v = qkv_inputs(rng, (2, 2, 4, 3), 4, dtype)
    mask = np.array([[True, True, False, True], [True] * 4])
    dout = normal(rng, q.shape, dtype)
    originals = [a.copy() for a in (q, k, v, mask, dout)]
    _, cache = backend.attention_forward(q, k, v, key_padding_mask=mask)
    backend.attention_backward(dout, cache)
    for a, b in zip((q, k, v, mask, dout), originals, strict=True):
        check.exact(a, b, output="inputs_unchanged")


def test_mha_does_not_mutate_its_inputs(backend, dtype, rng, check):
    args = good_mha(dtype)
    dy = normal(rng, args[0].shape, dtype)
    originals = [a.copy() for a in (*args, dy)]
    cache = backend.kv_cache_new(2, 2, 3, 3, dtype)
    backend.mha_forward(*args, n_head=2, kv_cache=cache)
    _, mcache, _ = backend.mha_forward(*args, n_head=2)
    backend.mha_backward(dy, mcache)
    for a, b in zip((*args, dy), originals, strict=True):
        check.exact(a, b, output="inputs_unchanged")


def test_non_contiguous_inputs_give_the_same_result(backend, dtype, rng, check):
    # q, k, v as strided views of a (B, T, NH, HS) array, the layout a head split makes
    base = normal(rng, (3, 2, 5, 2, 4), dtype)
    q, k, v = (base[i].transpose(0, 2, 1, 3) for i in range(3))
    out, _ = backend.attention_forward(q, k, v)
    dense, _ = backend.attention_forward(*(np.ascontiguousarray(a) for a in (q, k, v)))
    check.close(out, dense.astype(np.float64), output="non_contiguous", dtype=dtype)


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
