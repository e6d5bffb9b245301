"""Conformance of the linear layer, forward and backward.

Spec: ``cllm_spec.ffn``. ``linear_forward`` and ``linear_backward``, the weight
(OUT, IN) as in torch.nn.Linear: against the float64 reference over the edge
sizes and any leading shape, the few-row path of decoding, goldens, and finite
differences.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cllm_spec.errors import ShapeError
from cllm_spec.protocols import LinearCache
from conformance.ffn_helpers import (
    SIZE_PAIRS,
    linear_inputs,
)
from conformance.gradcheck import needs_float64
from conformance.strategies import EDGE_SIZES, FIXTURE_OK, as_oracle, normal


@pytest.mark.parametrize(("n_in", "n_out"), SIZE_PAIRS)
def test_linear_forward_matches_oracle(backend, dtype, oracle, rng, check, n_in, n_out):
    x, w, b = linear_inputs(rng, (2, 3), n_in, n_out, dtype)
    y, cache = backend.linear_forward(x, w, b)
    ref, _ = oracle.linear_forward(*as_oracle(x, w, b))
    check.close(y, ref, output="linear", dtype=dtype)
    assert isinstance(cache, LinearCache) and cache.has_bias


@pytest.mark.parametrize(("n_in", "n_out"), SIZE_PAIRS)
def test_linear_backward_matches_oracle(
    backend, dtype, oracle, rng, check, n_in, n_out
):
    x, w, b = linear_inputs(rng, (2, 3), n_in, n_out, dtype)
    dy = normal(rng, (2, 3, n_out), dtype)
    _, cache = backend.linear_forward(x, w, b)
    dx, dw, db = backend.linear_backward(dy, cache)
    _, ref_cache = oracle.linear_forward(*as_oracle(x, w, b))
    rdx, rdw, rdb = oracle.linear_backward(*as_oracle(dy), ref_cache)
    check.close(dx, rdx, output="linear.dx", dtype=dtype)
    check.close(dw, rdw, output="linear.dw", dtype=dtype)
    check.close(db, rdb, output="linear.db", dtype=dtype)


# Decoding runs linear on one row per sequence: a backend may take a
# matrix-vector path for few rows (the C backend streams w unpacked for M <= 16),
# so every M up to past that switch meets every SIMD edge size of IN and OUT.
@pytest.mark.parametrize("m", [*range(1, 10), 15, 16, 17])
def test_linear_few_rows_match_oracle_over_edge_sizes(
    backend, dtype, oracle, rng, check, m
):
    for n_in in EDGE_SIZES:
        for n_out in EDGE_SIZES:
            x, w, b = linear_inputs(rng, (m,), n_in, n_out, dtype)
            bias = None if (n_in + n_out) % 2 else b  # both paths, every size
            y, _ = backend.linear_forward(x, w, bias)
            ref_b = None if bias is None else bias.astype(np.float64)
            ref, _ = oracle.linear_forward(*as_oracle(x, w), ref_b)
            check.close(y, ref, output="linear", dtype=dtype)


def test_linear_rows_do_not_depend_on_the_batch_around_them(
    backend, dtype, oracle, rng, check
):
    # the first row of a decoding batch of 1, 4, 9 and 17 sequences (a few-row
    # path and the general one) is the same token's logits
    x, w, b = linear_inputs(rng, (17,), 65, 33, dtype)
    ref, _ = oracle.linear_forward(*as_oracle(x[:1], w, b))
    for m in (1, 4, 9, 17):
        y, _ = backend.linear_forward(x[:m], w, b)
        check.close(y[:1], ref, output="linear", dtype=dtype)


@FIXTURE_OK
@given(
    lead=st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple),
    n_in=st.sampled_from(EDGE_SIZES),
    n_out=st.sampled_from(EDGE_SIZES),
    seed=st.integers(0, 2**32 - 1),
    bias=st.booleans(),
)
def test_linear_any_leading_shape(
    backend, dtype, oracle, check, lead, n_in, n_out, seed, bias
):
    rng = np.random.default_rng(seed)
    x, w, b = linear_inputs(rng, lead, n_in, n_out, dtype)
    b = b if bias else None
    dy = normal(rng, (*lead, n_out), dtype)
    y, cache = backend.linear_forward(x, w, b)
    dx, dw, db = backend.linear_backward(dy, cache)
    ref_args = as_oracle(x, w) + [None if b is None else b.astype(np.float64)]
    ref, ref_cache = oracle.linear_forward(*ref_args)
    rdx, rdw, rdb = oracle.linear_backward(dy.astype(np.float64), ref_cache)
    check.close(y, ref, output="linear", dtype=dtype)
    check.close(dx, rdx, output="linear.dx", dtype=dtype)
    check.close(dw, rdw, output="linear.dw", dtype=dtype)
    if bias:
        check.close(db, rdb, output="linear.db", dtype=dtype)
    else:
        assert db is None


def test_linear_golden_asymmetric(backend, dtype, check):
    # w: (OUT=3, IN=2); y_o = sum_i w[o, i] x_i + b_o
    x = np.array([1.0, 2.0], dtype=dtype)
    w = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=dtype)
    b = np.array([0.5, -1.0, 2.0], dtype=dtype)
    y, _ = backend.linear_forward(x, w, b)
    # [1 + 4, 3 + 8, 5 + 12] + b
    check.close(y, np.array([5.5, 10.0, 19.0]), output="linear", dtype=dtype)
    y0, _ = backend.linear_forward(x, w, None)
    check.close(y0, np.array([5.0, 11.0, 17.0]), output="linear", dtype=dtype)


def test_linear_square_weight_uses_pytorch_layout(backend, dtype, check):
    # IN == OUT with a non-symmetric w: x @ w.T = [1, 3]; the (IN, OUT)
    # layout x @ w would give [1, 2] and must fail here
    x = np.array([[1.0, 0.0]], dtype=dtype)
    w = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=dtype)
    y, _ = backend.linear_forward(x, w, None)
    check.close(y, np.array([[1.0, 3.0]]), output="linear", dtype=dtype)


def test_linear_transposed_weight_is_rejected(backend):
    # x: (N, IN=3); w given as (IN, OUT) = (3, 4) instead of (OUT, IN) = (4, 3)
    x = np.ones((2, 3))
    with pytest.raises(ShapeError):
        backend.linear_forward(x, np.ones((3, 4)), np.ones(4))


def test_linear_backward_golden(backend, dtype, check):
    x = np.array([[1.0, 2.0], [-1.0, 0.5]], dtype=dtype)
    w = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=dtype)
    dy = np.array([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]], dtype=dtype)
    _, cache = backend.linear_forward(x, w, np.zeros(3, dtype=dtype))
    dx, dw, db = backend.linear_backward(dy, cache)
    # dx = dy @ w: row 0 = w0 - w2 = [-4, -4]; row 1 = 2 w1 = [6, 8]
    expected_dx = np.array([[-4.0, -4.0], [6.0, 8.0]])
    check.close(dx, expected_dx, output="linear.dx", dtype=dtype)
    # dw[o] = sum_n dy[n, o] x[n]: [x0, 2 x1, -x0]
    expected_dw = np.array([[1.0, 2.0], [-2.0, 1.0], [-1.0, -2.0]])
    check.close(dw, expected_dw, output="linear.dw", dtype=dtype)
    check.close(db, np.array([1.0, 2.0, -1.0]), output="linear.db", dtype=dtype)


def test_linear_rank1_input(backend, dtype, oracle, rng, check):
    x, w, b = linear_inputs(rng, (), 7, 5, dtype)
    dy = normal(rng, (5,), dtype)
    y, cache = backend.linear_forward(x, w, b)
    assert y.shape == (5,)
    dx, dw, db = backend.linear_backward(dy, cache)
    # one token: dw is the outer product dy x^T, db is dy
    check.close(dw, np.outer(dy.astype(np.float64), x), output="linear.dw")
    check.close(db, dy.astype(np.float64), output="linear.db")
    ref, _ = oracle.linear_forward(*as_oracle(x, w, b))
    check.close(y, ref, output="linear", dtype=dtype)
    assert dx.shape == (7,)


def test_linear_dw_sums_over_all_leading_dims(backend, dtype, check, rng):
    x, w, b = linear_inputs(rng, (2, 3, 4), 5, 6, dtype)
    dy = normal(rng, (2, 3, 4, 6), dtype)
    _, cache = backend.linear_forward(x, w, b)
    _, dw, db = backend.linear_backward(dy, cache)
    x2, dy2 = x.reshape(-1, 5).astype(np.float64), dy.reshape(-1, 6).astype(np.float64)
    check.close(dw, dy2.T @ x2, output="linear.dw", dtype=dtype)
    check.close(db, dy2.sum(axis=0), output="linear.db", dtype=dtype)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_linear_gradcheck(backend, rng, check, bias):
    needs_float64(backend)
    x, w, b = linear_inputs(rng, (2, 3), 4, 5, np.float64)
    dy = normal(rng, (2, 3, 5), np.float64)
    _, cache = backend.linear_forward(x, w, b if bias else None)
    dx, dw, db = backend.linear_backward(dy, cache)
    if bias:

        def f(x_, w_, b_):
            return backend.linear_forward(x_, w_, b_)[0]

        check.gradcheck(f, [x, w, b], dy, {0: dx, 1: dw, 2: db}, output="linear")
    else:
        assert db is None

        def g(x_, w_):
            return backend.linear_forward(x_, w_, None)[0]

        check.gradcheck(g, [x, w], dy, {0: dx, 1: dw}, output="linear")
