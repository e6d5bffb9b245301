"""Conformance of the feed-forward component (spec: ``cllm_spec.ffn``).

Linear (weight (OUT, IN) as torch.nn.Linear), relu / gelu (erf) / gelu_tanh,
layer norm and the feed-forward block, forward and backward.

The original project's 20 feed-forward tests (reference notes, section 1.7)
map to these tests; the ones that only checked "no crash" or "finite" are value
checks here:

 1 init(64, 256, 64) dims stored    -> test_ffn_output_and_cache_shapes
 2 free sets pointers to NULL       -> test_outputs_are_new_arrays
 3 forward_pass W=0.01, x=0.5       -> test_ffn_constant_weights_closed_form
 4 output_shape (32, 128, 64)       -> test_chain_asymmetric_dims_32_128_64
 5 batch_processing 4 x 16          -> test_ffn_rows_are_independent
 6 relu on 10 values                -> test_relu_golden_ten_values
 7 gelu on [-2, 2] finite           -> test_gelu_goldens (full-precision values)
 8 numerical_stability x = 100      -> test_ffn_large_inputs_match_oracle,
                                       test_activation_large_inputs_saturate
 9 zero_input finite                -> test_ffn_zero_input
10 different_dimensions             -> test_ffn_original_dimensions
11 asymmetric_dimensions            -> test_chain_asymmetric_dims_32_128_64
12 memory_cleanup                   -> test_outputs_are_new_arrays
13 null_handling                    -> test_*_bad_inputs (None and friends)
14 consistency                      -> test_forward_is_deterministic,
                                       test_backward_is_deterministic
15 relu_edge_cases                  -> test_relu_edge_cases (exact values)
16 gelu_properties 0 < g(x) < x     -> test_gelu_small_positive_properties,
                                       test_gelu_bounds
17 large_batch 64 x 32              -> test_ffn_large_batch
18 identity_weights (8, 8, 8)       -> test_ffn_identity_weights
19 relu_array_sizes 1..91           -> test_relu_array_sizes
20 weights zero after init          -> test_ffn_zero_weights_gradients
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cllm_spec.errors import ConfigError, DTypeError, EmptyInputError, ShapeError
from cllm_spec.protocols import (
    ActivationCache,
    FFNCache,
    LayerNormCache,
    LinearCache,
)
from cllm_spec.tolerances import Tolerance, tolerance
from conformance.strategies import EDGE_SIZES, as_oracle, normal

KINDS = ("relu", "gelu", "gelu_tanh")
GELU_KINDS = ("gelu", "gelu_tanh")
# (IN, OUT) and (C, F) pairs from the edge sizes, small products
SIZE_PAIRS = tuple(zip(EDGE_SIZES, EDGE_SIZES[::-1], strict=True))
FIXTURE_HEALTH = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

# --- golden constants ---------------------------------------------------------
# gelu(x) = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)); gelu_tanh(x) = 0.5 x (1 +
# tanh(sqrt(2/pi) (x + 0.044715 x^3))). Values at 50 digits, rounded to float64;
# test_golden_constants_match_libm re-derives each from math.erf / math.tanh.
GOLDEN_X = (-2.0, -1.0, 0.0, 1.0, 2.0)
GELU_AT = (
    -0.04550026389635842,  # -2 Phi(-2), Phi(-2) = 0.02275013194817921
    -0.15865525393145705,  # -Phi(-1)
    0.0,
    0.8413447460685429,  # Phi(1)
    1.9544997361036416,  # 2 Phi(2)
)
GELU_TANH_AT = (
    -0.04540230591222498,
    -0.1588080093917233,
    0.0,
    0.8411919906082767,
    1.954597694087775,
)
# d = gelu - gelu_tanh. Both forms satisfy f(x) - f(-x) = x, so d is even:
# d(-x) = d(x). Pinned so that swapping the two forms fails.
GELU_MINUS_TANH_AT = (
    -9.795798413343318e-05,
    1.5275546026624382e-04,
    0.0,
    1.5275546026624382e-04,
    -9.795798413343318e-05,
)
# d gelu/dx = Phi(x) + x phi(x); d gelu_tanh/dx by the chain rule (spec).
GELU_GRAD_AT = (
    -0.0852318010781969,
    -0.0833154705876863,
    0.5,
    1.0833154705876864,
    1.085231801078197,
)
GELU_TANH_GRAD_AT = (
    -0.08609925662361838,
    -0.08296408384578255,
    0.5,
    1.0829640838457826,
    1.0860992566236183,
)
# relu' is 1 for x > 0 and 0 for x <= 0 (0 at the kink, as PyTorch)
RELU_GRAD_AT = (0.0, 0.0, 0.0, 1.0, 1.0)
GOLDEN_GRAD = {
    "relu": RELU_GRAD_AT,
    "gelu": GELU_GRAD_AT,
    "gelu_tanh": GELU_TANH_GRAD_AT,
}


def _gelu_libm(x: float) -> float:
    """gelu via libm, with erfc on the left to avoid 1 + erf cancellation."""
    if x < 0:
        return 0.5 * x * math.erfc(-x / math.sqrt(2.0))
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def _gelu_tanh_libm(x: float) -> float:
    u = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)
    return 0.5 * x * (1.0 + math.tanh(u))


def _gelu_grad_libm(x: float) -> float:
    """Phi(x) + x phi(x)."""
    pdf = math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return 0.5 * math.erfc(-x / math.sqrt(2.0)) + x * pdf


def _gelu_tanh_grad_libm(x: float) -> float:
    k = math.sqrt(2.0 / math.pi)
    t = math.tanh(k * (x + 0.044715 * x**3))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3 * 0.044715 * x**2)


def _tol(output: str, dtype: Any) -> Tolerance:
    """The tolerance of ``dtype`` for a quantity derived (in float64) from outputs."""
    return tolerance("ffn", output, dtype)


def _needs_float64(backend: Any) -> None:
    if np.dtype(np.float64) not in backend.dtypes:
        pytest.skip("finite differences need float64, which this backend lacks")


def _linear_inputs(
    rng: np.random.Generator,
    lead: tuple[int, ...],
    n_in: int,
    n_out: int,
    dtype: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = normal(rng, (*lead, n_in), dtype)
    w = normal(rng, (n_out, n_in), dtype, scale=1.0 / math.sqrt(n_in))
    b = normal(rng, (n_out,), dtype, scale=0.5)
    return x, w, b


def _ffn_inputs(
    rng: np.random.Generator, lead: tuple[int, ...], c: int, f: int, dtype: Any
) -> list[np.ndarray]:
    x = normal(rng, (*lead, c), dtype)
    w_fc = normal(rng, (f, c), dtype, scale=1.0 / math.sqrt(c))
    b_fc = normal(rng, (f,), dtype, scale=0.5)
    w_proj = normal(rng, (c, f), dtype, scale=1.0 / math.sqrt(f))
    b_proj = normal(rng, (c,), dtype, scale=0.5)
    return [x, w_fc, b_fc, w_proj, b_proj]


# =============================================================== linear =====
@pytest.mark.parametrize(("n_in", "n_out"), SIZE_PAIRS)
def test_linear_forward_matches_oracle(backend, dtype, oracle, rng, check, n_in, n_out):
    x, w, b = _linear_inputs(rng, (2, 3), n_in, n_out, dtype)
    y, cache = backend.linear_forward(x, w, b)
    ref, _ = oracle.linear_forward(*as_oracle(x, w, b))
    check.close(y, ref, output="linear", dtype=dtype)
    assert isinstance(cache, LinearCache) and cache.has_bias


@pytest.mark.parametrize(("n_in", "n_out"), SIZE_PAIRS)
def test_linear_backward_matches_oracle(
    backend, dtype, oracle, rng, check, n_in, n_out
):
    x, w, b = _linear_inputs(rng, (2, 3), n_in, n_out, dtype)
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
            x, w, b = _linear_inputs(rng, (m,), n_in, n_out, dtype)
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
    x, w, b = _linear_inputs(rng, (17,), 65, 33, dtype)
    ref, _ = oracle.linear_forward(*as_oracle(x[:1], w, b))
    for m in (1, 4, 9, 17):
        y, _ = backend.linear_forward(x[:m], w, b)
        check.close(y[:1], ref, output="linear", dtype=dtype)


@FIXTURE_HEALTH
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
    x, w, b = _linear_inputs(rng, lead, n_in, n_out, dtype)
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
    x, w, b = _linear_inputs(rng, (), 7, 5, dtype)
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
    x, w, b = _linear_inputs(rng, (2, 3, 4), 5, 6, dtype)
    dy = normal(rng, (2, 3, 4, 6), dtype)
    _, cache = backend.linear_forward(x, w, b)
    _, dw, db = backend.linear_backward(dy, cache)
    x2, dy2 = x.reshape(-1, 5).astype(np.float64), dy.reshape(-1, 6).astype(np.float64)
    check.close(dw, dy2.T @ x2, output="linear.dw", dtype=dtype)
    check.close(db, dy2.sum(axis=0), output="linear.db", dtype=dtype)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_linear_gradcheck(backend, rng, check, bias):
    _needs_float64(backend)
    x, w, b = _linear_inputs(rng, (2, 3), 4, 5, np.float64)
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


# =========================================================== activations ====
@pytest.mark.parametrize("n", EDGE_SIZES)
@pytest.mark.parametrize("kind", KINDS)
def test_activation_matches_oracle(backend, dtype, oracle, rng, check, kind, n):
    x = normal(rng, (3, n), dtype, scale=3.0)
    y, cache = backend.activation_forward(x, kind)
    ref, _ = oracle.activation_forward(x.astype(np.float64), kind)
    check.close(y, ref, output="activation", dtype=dtype)
    assert isinstance(cache, ActivationCache) and cache.kind == kind


@pytest.mark.parametrize("kind", KINDS)
def test_activation_backward_matches_oracle(backend, dtype, oracle, rng, check, kind):
    for n in EDGE_SIZES:
        x = normal(rng, (2, n), dtype, scale=3.0)
        dy = normal(rng, (2, n), dtype)
        _, cache = backend.activation_forward(x, kind)
        dx = backend.activation_backward(dy, cache)
        _, ref_cache = oracle.activation_forward(x.astype(np.float64), kind)
        ref = oracle.activation_backward(dy.astype(np.float64), ref_cache)
        check.close(dx, ref, output="activation.dx", dtype=dtype)


def test_golden_constants_match_libm():
    for x, g, gt, d in zip(
        GOLDEN_X, GELU_AT, GELU_TANH_AT, GELU_MINUS_TANH_AT, strict=True
    ):
        # a few ulp: rounding x / sqrt 2 alone moves erfc by up to 2 z^2 ulp
        assert g == pytest.approx(_gelu_libm(x), rel=2e-15, abs=1e-300)
        assert gt == pytest.approx(_gelu_tanh_libm(x), rel=2e-15, abs=1e-300)
        assert d == pytest.approx(g - gt, rel=1e-11, abs=1e-300)
    for x, dg, dgt in zip(GOLDEN_X, GELU_GRAD_AT, GELU_TANH_GRAD_AT, strict=True):
        # the derivatives cancel near their zero at x = -0.75: a few more ulp
        assert dg == pytest.approx(_gelu_grad_libm(x), rel=1e-14)
        assert dgt == pytest.approx(_gelu_tanh_grad_libm(x), rel=1e-14)


@pytest.mark.parametrize("kind", GELU_KINDS)
def test_gelu_goldens(backend, dtype, check, kind):
    x = np.array(GOLDEN_X, dtype=dtype)
    y, _ = backend.activation_forward(x, kind)
    expected = GELU_AT if kind == "gelu" else GELU_TANH_AT
    check.close(y, np.array(expected), output="activation", dtype=dtype)
    assert y[2] == 0.0  # gelu(0) = 0 exactly for both forms


def test_gelu_minus_gelu_tanh_is_pinned(backend, dtype, check):
    x = np.array(GOLDEN_X, dtype=dtype)
    erf_form, _ = backend.activation_forward(x, "gelu")
    tanh_form, _ = backend.activation_forward(x, "gelu_tanh")
    diff = erf_form.astype(np.float64) - tanh_form.astype(np.float64)
    # the difference of two outputs carries the error of both: the activation
    # tolerance of this dtype, applied to a float64 difference
    tol = _tol("activation", dtype)
    check.close(diff, np.array(GELU_MINUS_TANH_AT), output="gelu_minus_tanh", tol=tol)


def test_gelu_matches_libm_on_a_dense_grid(backend, dtype, rng, check):
    grid = np.concatenate(
        [np.linspace(-10.0, 10.0, 4001), 3.0 * rng.standard_normal(1000)]
    )
    x = grid.astype(dtype)
    y, _ = backend.activation_forward(x, "gelu")
    expected = np.array([_gelu_libm(float(v)) for v in x])
    check.close(y, expected, output="gelu_vs_libm", dtype=dtype)


def test_gelu_tanh_matches_libm_on_a_dense_grid(backend, dtype, rng, check):
    grid = np.concatenate(
        [np.linspace(-10.0, 10.0, 4001), 3.0 * rng.standard_normal(1000)]
    )
    x = grid.astype(dtype)
    y, _ = backend.activation_forward(x, "gelu_tanh")
    expected = np.array([_gelu_tanh_libm(float(v)) for v in x])
    check.close(y, expected, output="activation", dtype=dtype)


@pytest.mark.parametrize("kind", KINDS)
def test_activation_derivative_goldens(backend, dtype, check, kind):
    x = np.array(GOLDEN_X, dtype=dtype)
    _, cache = backend.activation_forward(x, kind)
    dx = backend.activation_backward(np.ones_like(x), cache)
    check.close(dx, np.array(GOLDEN_GRAD[kind]), output="activation.dx", dtype=dtype)


def test_relu_golden_ten_values(backend, dtype, check):
    x = np.array(
        [-3.5, -2.0, -1.0, -0.25, 0.0, 0.25, 1.0, 2.0, 3.5, 100.0], dtype=dtype
    )
    y, _ = backend.activation_forward(x, "relu")
    expected = np.array([0, 0, 0, 0, 0, 0.25, 1, 2, 3.5, 100], dtype=dtype)
    np.testing.assert_array_equal(y, expected, strict=True)  # +0 and -0 alike


def test_relu_edge_cases(backend, dtype, check):
    x = np.array([-np.inf, -1e10, -1e-10, 1e-10, 1e10, np.inf], dtype=dtype)
    y, _ = backend.activation_forward(x, "relu")
    # negatives become 0, positives (including tiny and inf) are unchanged
    expected = np.concatenate([np.zeros(3, dtype=dtype), x[3:]])
    np.testing.assert_array_equal(y, expected, strict=True)


@pytest.mark.parametrize("n", range(1, 92, 10))
def test_relu_array_sizes(backend, dtype, rng, check, n):
    x = normal(rng, (n,), dtype)
    y, _ = backend.activation_forward(x, "relu")
    np.testing.assert_array_equal(y, np.where(x > 0, x, np.zeros_like(x)), strict=True)


def test_relu_gradient_at_zero_is_zero(backend, dtype, check):
    x = np.array([-1.0, -0.0, 0.0, 1e-30, 1.0], dtype=dtype)
    _, cache = backend.activation_forward(x, "relu")
    dx = backend.activation_backward(np.full_like(x, 3.0), cache)
    expected = np.array([0.0, 0.0, 0.0, 3.0, 3.0], dtype=dtype)
    np.testing.assert_array_equal(dx, expected, strict=True)


@pytest.mark.parametrize("kind", GELU_KINDS)
def test_gelu_small_positive_properties(backend, dtype, kind):
    x = np.array([0.1, 0.2, 0.3], dtype=dtype)
    y, _ = backend.activation_forward(x, kind)
    assert np.all(y > 0) and np.all(y < x)
    # stronger: gelu(x) = x Phi(x) and Phi(x) in (0.5, 0.62) on this range
    ratio = y.astype(np.float64) / x
    assert np.all((ratio > 0.5) & (ratio < 0.62))


@FIXTURE_HEALTH
@pytest.mark.parametrize("kind", GELU_KINDS)
@given(
    values=st.lists(
        st.floats(-60.0, 60.0, allow_nan=False, allow_subnormal=False),
        min_size=1,
        max_size=40,
    )
)
def test_gelu_bounds(backend, dtype, kind, values):
    x = np.array(values, dtype=dtype)
    y, _ = backend.activation_forward(x, kind)
    y64, x64 = y.astype(np.float64), x.astype(np.float64)
    # positive side: 0 < gelu(x) <= x (equal once Phi(x) rounds to 1)
    pos = x64 > 1e-30
    assert np.all(y64[pos] > 0) and np.all(y64[pos] <= x64[pos])
    # negative side: x <= gelu(x) <= 0 and never below the global minimum
    # (-0.16997 for erf, -0.17004 for tanh, at x ~ -0.752)
    neg = x64 < 0
    assert np.all(y64[neg] <= 0) and np.all(y64[neg] >= x64[neg])
    assert np.all(y64 >= -0.17005)


@pytest.mark.parametrize("kind", KINDS)
def test_activation_gradcheck(backend, rng, check, kind):
    _needs_float64(backend)
    x = rng.uniform(-4.0, 4.0, size=(3, 7))
    x = np.where(np.abs(x) < 0.1, 0.5, x)  # keep away from the relu kink
    dy = rng.standard_normal((3, 7))
    _, cache = backend.activation_forward(x, kind)
    dx = backend.activation_backward(dy, cache)

    def f(x_):
        return backend.activation_forward(x_, kind)[0]

    check.gradcheck(f, [x], dy, {0: dx}, output=kind)


@pytest.mark.parametrize("kind", KINDS)
def test_activation_special_values(backend, dtype, kind):
    x = np.array([np.inf, -np.inf, np.nan, 1.0], dtype=dtype)
    y, cache = backend.activation_forward(x, kind)
    assert y[0] == np.inf  # relu and gelu(+inf) = +inf
    assert y[1] == 0.0  # relu(-inf) = 0; gelu(-inf) = 0 (the limit)
    assert np.isnan(y[2])  # NaN propagates
    dx = backend.activation_backward(np.full_like(x, 2.0), cache)
    assert dx[0] == 2.0 and dx[1] == 0.0  # derivatives 1 and 0 at +-inf
    if kind == "relu":
        assert dx[2] == 2.0  # threshold_backward: NaN is not <= 0, dy passes
    else:
        assert np.isnan(dx[2])


@pytest.mark.parametrize("kind", KINDS)
def test_activation_large_inputs_saturate(backend, dtype, kind):
    big = float(np.finfo(dtype).max) / 2
    x = np.array([100.0, 1e4, big, -100.0, -1e4, -big], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no overflow on the way
        y, cache = backend.activation_forward(x, kind)
        dx = backend.activation_backward(np.ones_like(x), cache)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    np.testing.assert_array_equal(y[:3], x[:3])  # gelu(x) = x for x >> 0
    np.testing.assert_array_equal(y[3:], 0.0)  # and 0 for x << 0
    np.testing.assert_array_equal(dx, [1, 1, 1, 0, 0, 0])


def test_activation_zero_dim_input(backend, dtype, check):
    x = np.array(1.0, dtype=dtype)
    y, cache = backend.activation_forward(x, "gelu")
    assert isinstance(y, np.ndarray) and y.shape == () and y.dtype == dtype
    check.close(y, np.array(GELU_AT[3]), output="activation")
    dx = backend.activation_backward(np.array(1.0, dtype=dtype), cache)
    assert isinstance(dx, np.ndarray) and dx.shape == ()
    check.close(dx, np.array(GELU_GRAD_AT[3]), output="activation.dx", dtype=dtype)


# ============================================================ layernorm =====
@pytest.mark.parametrize("c", EDGE_SIZES)
def test_layernorm_matches_oracle(backend, dtype, oracle, rng, check, c):
    x = normal(rng, (2, 3, c), dtype, scale=2.0)
    weight = normal(rng, (c,), dtype)
    bias = normal(rng, (c,), dtype)
    y, cache = backend.layernorm_forward(x, weight, bias)
    ref, ref_cache = oracle.layernorm_forward(*as_oracle(x, weight, bias))
    check.close(y, ref, output="layernorm", dtype=dtype)
    check.close(cache.x_hat, ref_cache.x_hat, output="layernorm.x_hat", dtype=dtype)
    check.close(cache.rstd, ref_cache.rstd, output="layernorm.rstd", dtype=dtype)


@pytest.mark.parametrize("c", EDGE_SIZES)
def test_layernorm_backward_matches_oracle(backend, dtype, oracle, rng, check, c):
    x = normal(rng, (2, 3, c), dtype, scale=2.0)
    weight = normal(rng, (c,), dtype)
    bias = normal(rng, (c,), dtype)
    dy = normal(rng, (2, 3, c), dtype)
    _, cache = backend.layernorm_forward(x, weight, bias)
    dx, dweight, dbias = backend.layernorm_backward(dy, cache)
    _, ref_cache = oracle.layernorm_forward(*as_oracle(x, weight, bias))
    rdx, rdw, rdb = oracle.layernorm_backward(dy.astype(np.float64), ref_cache)
    check.close(dx, rdx, output="layernorm.dx", dtype=dtype)
    check.close(dweight, rdw, output="layernorm.dweight", dtype=dtype)
    check.close(dbias, rdb, output="layernorm.dbias", dtype=dtype)


def test_layernorm_golden_default_eps(backend, dtype, check):
    # x = [1, 2, 3, 4]: mean 2.5, biased var 1.25, rstd = 1/sqrt(1.25 + 1e-5)
    rstd = 0.894423613312618
    a, b = 1.3416354199689269, 0.447211806656309  # 1.5 rstd, 0.5 rstd
    x = np.array([1.0, 2.0, 3.0, 4.0], dtype=dtype)
    weight = np.array([1.0, 2.0, 0.5, -1.0], dtype=dtype)
    bias = np.array([0.0, 1.0, -1.0, 0.5], dtype=dtype)
    y, cache = backend.layernorm_forward(x, weight, bias)
    x_hat = np.array([-a, -b, b, a])
    check.close(cache.x_hat, x_hat, output="layernorm.x_hat", dtype=dtype)
    check.close(cache.rstd, np.array(rstd), output="layernorm.rstd", dtype=dtype)
    check.close(
        y, x_hat * [1.0, 2.0, 0.5, -1.0] + [0.0, 1.0, -1.0, 0.5], output="layernorm"
    )


def test_layernorm_golden_biased_variance_eps_inside_sqrt(backend, dtype, check):
    # x = [1, 3]: biased var = 1, eps = 3 -> rstd = 1/sqrt(4) = 0.5, x_hat = +-0.5.
    # The unbiased var (2) gives rstd 1/sqrt(5); eps outside the root gives 0.25.
    x = np.array([[1.0, 3.0]], dtype=dtype)
    ones, zeros = np.ones(2, dtype=dtype), np.zeros(2, dtype=dtype)
    y, cache = backend.layernorm_forward(x, ones, zeros, eps=3.0)
    check.close(y, np.array([[-0.5, 0.5]]), output="layernorm", dtype=dtype)
    check.close(cache.rstd, np.array([0.5]), output="layernorm.rstd", dtype=dtype)


def test_layernorm_default_eps_is_1e_5(backend, check):
    # var = 1e-5 (rows [+-sqrt(1e-5)]) -> rstd = 1/sqrt(2e-5) with eps 1e-5
    s = math.sqrt(1e-5)
    x = np.array([[-s, s]])
    _, cache = backend.layernorm_forward(x, np.ones(2), np.zeros(2))
    check.close(cache.rstd, np.array([1.0 / math.sqrt(2e-5)]), output="layernorm.rstd")


def test_layernorm_constant_row_gives_bias(backend, dtype, oracle, rng, check):
    x = np.array([[7.25] * 5, [-3.0] * 5, [0.0] * 5], dtype=dtype)
    weight = normal(rng, (5,), dtype)
    bias = normal(rng, (5,), dtype)
    y, cache = backend.layernorm_forward(x, weight, bias)
    assert np.all(np.isfinite(y))
    # rows chosen so that any summation order gives mean == x exactly
    check.close(y, np.broadcast_to(bias, (3, 5)).astype(np.float64), output="layernorm")
    dy = normal(rng, (3, 5), dtype)
    dx, _, _ = backend.layernorm_backward(dy, cache)
    assert np.all(np.isfinite(dx))
    _, ref_cache = oracle.layernorm_forward(*as_oracle(x, weight, bias))
    rdx, _, _ = oracle.layernorm_backward(dy.astype(np.float64), ref_cache)
    check.close(dx, rdx, output="layernorm.dx", dtype=dtype)


@pytest.mark.parametrize("noise", [1.0, 0.1])
def test_layernorm_huge_offset(backend, dtype, oracle, rng, check, noise):
    # rows 1e4 + small noise: a float32 mean of the raw values loses ~3 digits
    x = (1e4 + noise * rng.standard_normal((4, 33))).astype(dtype)
    weight = normal(rng, (33,), dtype)
    bias = normal(rng, (33,), dtype)
    dy = normal(rng, (4, 33), dtype)
    y, cache = backend.layernorm_forward(x, weight, bias)
    dx, dweight, _ = backend.layernorm_backward(dy, cache)
    ref, ref_cache = oracle.layernorm_forward(*as_oracle(x, weight, bias))
    rdx, rdw, _ = oracle.layernorm_backward(dy.astype(np.float64), ref_cache)
    check.close(y, ref, output="layernorm", dtype=dtype)
    check.close(dx, rdx, output="layernorm.dx", dtype=dtype)
    check.close(dweight, rdw, output="layernorm.dweight", dtype=dtype)


def test_layernorm_normalizes_rows(backend, dtype, rng, check):
    x = normal(rng, (6, 17), dtype, scale=3.0)
    ones, zeros = np.ones(17, dtype=dtype), np.zeros(17, dtype=dtype)
    y, _ = backend.layernorm_forward(x, ones, zeros)
    var = x.astype(np.float64).var(axis=-1)
    y64, tol = y.astype(np.float64), _tol("layernorm", dtype)
    check.close(y64.mean(axis=-1), np.zeros(6), output="layernorm.mean", tol=tol)
    # biased variance of x_hat is var / (var + eps)
    check.close(y64.var(axis=-1), var / (var + 1e-5), output="layernorm.var", tol=tol)


def test_layernorm_shift_invariant(backend, dtype, rng, check):
    x = normal(rng, (4, 15), dtype)
    weight, bias = normal(rng, (15,), dtype), normal(rng, (15,), dtype)
    y, _ = backend.layernorm_forward(x, weight, bias)
    y_shift, _ = backend.layernorm_forward(x + dtype.type(8.0), weight, bias)
    check.close(y_shift, y.astype(np.float64), output="layernorm")


def test_layernorm_backward_properties(backend, dtype, rng, check):
    x = normal(rng, (5, 16), dtype)
    weight, bias = normal(rng, (16,), dtype), normal(rng, (16,), dtype)
    dy = normal(rng, (5, 16), dtype)
    _, cache = backend.layernorm_forward(x, weight, bias)
    dx, dweight, dbias = backend.layernorm_backward(dy, cache)
    dx64, tol = dx.astype(np.float64), _tol("layernorm.dx", dtype)
    # each row of dx sums to 0 (the mean is subtracted), and its component
    # along x_hat is what eps leaves over: with g = dy * weight and
    # sum x_hat^2 = C var / (var + eps),
    #   sum dx x_hat = rstd * sum(g x_hat) * (1 - mean(x_hat^2))
    check.close(dx64.sum(axis=-1), np.zeros(5), output="layernorm.dx_sum", tol=tol)
    x_hat = cache.x_hat.astype(np.float64)
    g_xhat = (dy.astype(np.float64) * weight * x_hat).sum(axis=-1)
    along = cache.rstd * g_xhat * (1.0 - (x_hat * x_hat).mean(axis=-1))
    dx_xhat = (dx64 * x_hat).sum(axis=-1)
    check.close(dx_xhat, along, output="layernorm.dx_xhat", tol=tol)
    check.close(dbias, dy.astype(np.float64).sum(axis=0), output="layernorm.dbias")
    expected_dw = (dy.astype(np.float64) * x_hat).sum(axis=0)
    check.close(dweight, expected_dw, output="layernorm.dweight")


def test_layernorm_gradcheck(backend, rng, check):
    _needs_float64(backend)
    x = rng.standard_normal((2, 3, 5))
    weight, bias = rng.standard_normal(5), rng.standard_normal(5)
    dy = rng.standard_normal((2, 3, 5))
    _, cache = backend.layernorm_forward(x, weight, bias)
    dx, dweight, dbias = backend.layernorm_backward(dy, cache)

    def f(x_, w_, b_):
        return backend.layernorm_forward(x_, w_, b_)[0]

    grads = {0: dx, 1: dweight, 2: dbias}
    check.gradcheck(f, [x, weight, bias], dy, grads, output="layernorm")


def test_layernorm_rank1_and_cache_shapes(backend, dtype, oracle, rng, check):
    x = normal(rng, (7,), dtype)
    weight, bias = normal(rng, (7,), dtype), normal(rng, (7,), dtype)
    y, cache = backend.layernorm_forward(x, weight, bias)
    assert isinstance(cache, LayerNormCache)
    assert cache.x_hat.shape == (7,) and np.shape(cache.rstd) == ()
    ref, _ = oracle.layernorm_forward(*as_oracle(x, weight, bias))
    check.close(y, ref, output="layernorm", dtype=dtype)
    _, cache3 = backend.layernorm_forward(normal(rng, (2, 3, 7), dtype), weight, bias)
    assert cache3.x_hat.shape == (2, 3, 7) and cache3.rstd.shape == (2, 3)


# ================================================================== ffn =====
@pytest.mark.parametrize("activation", KINDS)
@pytest.mark.parametrize(("c", "f"), SIZE_PAIRS[::2])
def test_ffn_matches_oracle(backend, dtype, oracle, rng, check, c, f, activation):
    args = _ffn_inputs(rng, (2, 3), c, f, dtype)
    y, _ = backend.ffn_forward(*args, activation=activation)
    ref, _ = oracle.ffn_forward(*as_oracle(*args), activation=activation)
    check.close(y, ref, output="ffn", dtype=dtype)


@pytest.mark.parametrize("activation", KINDS)
@pytest.mark.parametrize(("c", "f"), SIZE_PAIRS[1::2])
def test_ffn_backward_matches_oracle(
    backend, dtype, oracle, rng, check, c, f, activation
):
    args = _ffn_inputs(rng, (2, 3), c, f, dtype)
    dy = normal(rng, (2, 3, c), dtype)
    _, cache = backend.ffn_forward(*args, activation=activation)
    grads = backend.ffn_backward(dy, cache)
    _, ref_cache = oracle.ffn_forward(*as_oracle(*args), activation=activation)
    ref = oracle.ffn_backward(dy.astype(np.float64), ref_cache)
    names = ("dx", "dw_fc", "db_fc", "dw_proj", "db_proj")
    for name, got, want in zip(names, grads, ref, strict=True):
        check.close(got, want, output=f"ffn.{name}", dtype=dtype)


@pytest.mark.parametrize("activation", KINDS)
def test_ffn_equals_composition(backend, dtype, rng, check, activation):
    x, w_fc, b_fc, w_proj, b_proj = _ffn_inputs(rng, (4,), 16, 33, dtype)
    y, _ = backend.ffn_forward(x, w_fc, b_fc, w_proj, b_proj, activation=activation)
    h, _ = backend.linear_forward(x, w_fc, b_fc)
    a, _ = backend.activation_forward(h, activation)
    expected, _ = backend.linear_forward(a, w_proj, b_proj)
    check.close(y, expected.astype(np.float64), output="ffn", dtype=dtype)


def test_ffn_golden_relu(backend, dtype, check):
    x = np.array([1.0, -1.0], dtype=dtype)
    w_fc = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=dtype)  # (F=3, C=2)
    b_fc = np.array([0.0, 0.0, 0.5], dtype=dtype)
    w_proj = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=dtype)  # (C=2, F=3)
    b_proj = np.array([0.25, -1.0], dtype=dtype)
    # h = [1, -1, 0.5]; relu -> [1, 0, 0.5]; y = [1 + 1.5, 4 + 3] + b_proj
    y, _ = backend.ffn_forward(x, w_fc, b_fc, w_proj, b_proj, activation="relu")
    check.close(y, np.array([2.75, 6.0]), output="ffn", dtype=dtype)
    # dy = [1, 0]: da = w_proj[0] = [1, 2, 3]; relu' = [1, 0, 1] -> dh = [1, 0, 3]
    # dx = dh @ w_fc = [1 + 3, 3] ; dw_proj = outer(dy, a) ; db_fc = dh
    _, cache = backend.ffn_forward(x, w_fc, b_fc, w_proj, b_proj, activation="relu")
    dx, dw_fc, db_fc, dw_proj, db_proj = backend.ffn_backward(
        np.array([1.0, 0.0], dtype=dtype), cache
    )
    check.close(dx, np.array([4.0, 3.0]), output="ffn.dx", dtype=dtype)
    check.close(db_fc, np.array([1.0, 0.0, 3.0]), output="ffn.db_fc", dtype=dtype)
    check.close(
        dw_fc, np.array([[1.0, -1.0], [0.0, 0.0], [3.0, -3.0]]), output="ffn.dw_fc"
    )
    check.close(
        dw_proj, np.array([[1.0, 0.0, 0.5], [0.0, 0.0, 0.0]]), output="ffn.dw_proj"
    )
    check.close(db_proj, np.array([1.0, 0.0]), output="ffn.db_proj", dtype=dtype)


def test_ffn_default_activation_is_gelu_erf(backend, dtype, check):
    one = np.ones((1, 1), dtype=dtype)
    x = np.array([1.0], dtype=dtype)
    y, cache = backend.ffn_forward(x, one, None, one, None)
    assert cache.act.kind == "gelu"
    check.close(y, np.array([GELU_AT[3]]), output="ffn", dtype=dtype)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("activation", KINDS)
def test_ffn_gradcheck(backend, rng, check, activation, bias):
    _needs_float64(backend)
    for _ in range(100):  # redraw until no relu pre-activation sits on the kink
        x, w_fc, b_fc, w_proj, b_proj = _ffn_inputs(rng, (2, 2), 3, 5, np.float64)
        h = x @ w_fc.T + (b_fc if bias else 0.0)
        if activation != "relu" or np.min(np.abs(h)) > 1e-3:
            break
    dy = rng.standard_normal((2, 2, 3))
    if bias:
        args = [x, w_fc, b_fc, w_proj, b_proj]

        def f(*a):
            return backend.ffn_forward(*a, activation=activation)[0]

        _, cache = backend.ffn_forward(*args, activation=activation)
        dx, dw_fc, db_fc, dw_proj, db_proj = backend.ffn_backward(dy, cache)
        grads = {0: dx, 1: dw_fc, 2: db_fc, 3: dw_proj, 4: db_proj}
    else:
        args = [x, w_fc, w_proj]

        def f(x_, wf, wp):
            return backend.ffn_forward(x_, wf, None, wp, None, activation=activation)[0]

        _, cache = backend.ffn_forward(
            x, w_fc, None, w_proj, None, activation=activation
        )
        dx, dw_fc, db_fc, dw_proj, db_proj = backend.ffn_backward(dy, cache)
        assert db_fc is None and db_proj is None
        grads = {0: dx, 1: dw_fc, 2: dw_proj}
    check.gradcheck(f, args, dy, grads, output="ffn")


def test_ffn_output_and_cache_shapes(backend, dtype, rng):
    args = _ffn_inputs(rng, (2, 5), 16, 64, dtype)
    y, cache = backend.ffn_forward(*args)
    assert y.shape == (2, 5, 16) and y.dtype == dtype
    assert isinstance(cache, FFNCache)
    assert cache.fc.x.shape == (2, 5, 16) and cache.fc.w.shape == (64, 16)
    assert cache.act.x.shape == (2, 5, 64) and cache.proj.w.shape == (16, 64)
    grads = backend.ffn_backward(np.ones_like(y), cache)
    shapes = [g.shape for g in grads]
    assert shapes == [(2, 5, 16), (64, 16), (64,), (16, 64), (16,)]
    assert all(g.dtype == dtype for g in grads)


def test_ffn_constant_weights_closed_form(backend, dtype, check):
    # original forward_pass: C = 8, F = 16, all weights 0.01, x = 0.5, no bias.
    # h_j = 8 * 0.01 * 0.5 = 0.04; y_i = 16 * 0.01 * gelu(0.04)
    x = np.full((8,), 0.5, dtype=dtype)
    w_fc = np.full((16, 8), 0.01, dtype=dtype)
    w_proj = np.full((8, 16), 0.01, dtype=dtype)
    y, _ = backend.ffn_forward(x, w_fc, None, w_proj, None)
    check.close(y, np.full(8, 0.003302101995858117), output="ffn", dtype=dtype)
    assert 0.16 * _gelu_libm(0.04) == pytest.approx(0.003302101995858117, rel=1e-14)


def test_chain_asymmetric_dims_32_128_64(backend, dtype, oracle, rng, check):
    # the original's 32 -> 128 -> 64 network as linear, gelu, linear
    x, w1, b1 = _linear_inputs(rng, (3,), 32, 128, dtype)
    _, w2, b2 = _linear_inputs(rng, (), 128, 64, dtype)
    h, _ = backend.linear_forward(x, w1, b1)
    a, _ = backend.activation_forward(h, "gelu")
    y, _ = backend.linear_forward(a, w2, b2)
    assert h.shape == (3, 128) and y.shape == (3, 64)
    rh, _ = oracle.linear_forward(*as_oracle(x, w1, b1))
    ra, _ = oracle.activation_forward(rh, "gelu")
    ry, _ = oracle.linear_forward(ra, *as_oracle(w2, b2))
    check.close(y, ry, output="ffn", dtype=dtype)
    with pytest.raises(ShapeError):  # the block itself must map back to C
        backend.ffn_forward(x, w1, b1, w2, b2)


def test_ffn_rows_are_independent(backend, dtype, rng, check):
    args = _ffn_inputs(rng, (4,), 16, 16, dtype)
    y, _ = backend.ffn_forward(*args)
    for row in range(4):  # each row alone gives the same answer as in the batch
        y_row, _ = backend.ffn_forward(args[0][row], *args[1:])
        check.close(y_row, y[row].astype(np.float64), output="ffn", dtype=dtype)


@pytest.mark.parametrize("value", [100.0, 1e4, -1e4])
def test_ffn_large_inputs_match_oracle(backend, dtype, oracle, rng, check, value):
    args = _ffn_inputs(rng, (3,), 8, 16, dtype)
    args[0] = np.full((3, 8), value, dtype=dtype)
    y, _ = backend.ffn_forward(*args)
    assert np.all(np.isfinite(y))
    ref, _ = oracle.ffn_forward(*as_oracle(*args))
    check.close(y, ref, output="ffn", dtype=dtype)


@pytest.mark.parametrize("activation", KINDS)
def test_ffn_zero_input(backend, dtype, rng, check, activation):
    _, w_fc, b_fc, w_proj, b_proj = _ffn_inputs(rng, (), 8, 16, dtype)
    x = np.zeros((2, 8), dtype=dtype)
    y0, _ = backend.ffn_forward(x, w_fc, None, w_proj, None, activation=activation)
    assert y0.dtype == dtype and np.all(y0 == 0)  # act(0) = 0 exactly
    y, _ = backend.ffn_forward(x, w_fc, b_fc, w_proj, b_proj, activation=activation)
    a, _ = backend.activation_forward(b_fc, activation)
    expected = w_proj.astype(np.float64) @ a + b_proj  # (C,)
    check.close(y, np.broadcast_to(expected, (2, 8)), output="ffn", dtype=dtype)


@pytest.mark.parametrize(("c", "f", "rows"), [(4, 8, 5), (64, 256, 3), (512, 2048, 1)])
def test_ffn_original_dimensions(backend, dtype, oracle, rng, check, c, f, rows):
    args = _ffn_inputs(rng, (rows,), c, f, dtype)
    y, _ = backend.ffn_forward(*args)
    ref, _ = oracle.ffn_forward(*as_oracle(*args))
    check.close(y, ref, output="ffn", dtype=dtype)


def test_ffn_large_batch(backend, dtype, oracle, rng, check):
    args = _ffn_inputs(rng, (64,), 32, 128, dtype)
    dy = normal(rng, (64, 32), dtype)
    y, cache = backend.ffn_forward(*args)
    grads = backend.ffn_backward(dy, cache)
    ref, ref_cache = oracle.ffn_forward(*as_oracle(*args))
    ref_grads = oracle.ffn_backward(dy.astype(np.float64), ref_cache)
    check.close(y, ref, output="ffn", dtype=dtype)
    for got, want in zip(grads, ref_grads, strict=True):
        check.close(got, want, output="ffn.grad", dtype=dtype)


@pytest.mark.parametrize("activation", KINDS)
def test_ffn_identity_weights(backend, dtype, rng, check, activation):
    eye = np.eye(8, dtype=dtype)
    x = normal(rng, (3, 8), dtype)
    y, _ = backend.ffn_forward(x, eye, None, eye, None, activation=activation)
    a, _ = backend.activation_forward(x, activation)
    check.close(y, a.astype(np.float64), output="ffn", dtype=dtype)


def test_ffn_zero_weights_gradients(backend, dtype, rng, check):
    # zero-initialized weights: y = b_proj, and dx is exactly 0 (the input
    # gradient vanishes), while dw_proj = dy^T act(b_fc) is not 0
    c, f = 4, 8
    zf, zp = np.zeros((f, c), dtype=dtype), np.zeros((c, f), dtype=dtype)
    b_fc = normal(rng, (f,), dtype)
    b_proj = normal(rng, (c,), dtype)
    x = normal(rng, (3, c), dtype)
    dy = normal(rng, (3, c), dtype)
    y, cache = backend.ffn_forward(x, zf, b_fc, zp, b_proj)
    check.close(y, np.broadcast_to(b_proj, (3, c)).astype(np.float64), output="ffn")
    dx, dw_fc, db_fc, dw_proj, db_proj = backend.ffn_backward(dy, cache)
    assert dx.dtype == dtype and np.all(dx == 0)  # +-0 both fine
    assert dw_fc.dtype == dtype and np.all(dw_fc == 0)
    a, _ = backend.activation_forward(b_fc, "gelu")
    expected = dy.astype(np.float64).sum(axis=0)[:, None] * a.astype(np.float64)
    check.close(dw_proj, expected, output="ffn.dw_proj", dtype=dtype)
    check.close(db_proj, dy.astype(np.float64).sum(axis=0), output="ffn.db_proj")


# ======================================================== special values =====
def test_nan_stays_in_its_row(backend, dtype, rng):
    x = normal(rng, (3, 8), dtype)
    x[1, 2] = np.nan
    w, b = normal(rng, (5, 8), dtype), normal(rng, (5,), dtype)
    y, _ = backend.linear_forward(x, w, b)
    assert np.all(np.isnan(y[1])) and np.all(np.isfinite(y[[0, 2]]))
    ones, zeros = np.ones(8, dtype=dtype), np.zeros(8, dtype=dtype)
    z, _ = backend.layernorm_forward(x, ones, zeros)
    assert np.all(np.isnan(z[1])) and np.all(np.isfinite(z[[0, 2]]))
    args = _ffn_inputs(rng, (), 8, 16, dtype)
    u, _ = backend.ffn_forward(x, *args[1:])
    assert np.all(np.isnan(u[1])) and np.all(np.isfinite(u[[0, 2]]))


def test_noncontiguous_inputs(backend, dtype, oracle, rng, check):
    # strided views are accepted and give the values of their contiguous copies
    big = normal(rng, (6, 34), dtype)
    x = big[::2, ::2]  # (3, 17), non-contiguous
    w = normal(rng, (17, 9), dtype).T  # (9, 17), Fortran order
    b = normal(rng, (18,), dtype)[::2]
    assert not x.flags.c_contiguous and not w.flags.c_contiguous
    y, _ = backend.linear_forward(x, w, b)
    ref, _ = oracle.linear_forward(*as_oracle(x, w, b))
    check.close(y, ref, output="linear", dtype=dtype)
    weight, bias = normal(rng, (34,), dtype)[::2], normal(rng, (34,), dtype)[1::2]
    z, _ = backend.layernorm_forward(x, weight, bias)
    rz, _ = oracle.layernorm_forward(*as_oracle(x, weight, bias))
    check.close(z, rz, output="layernorm", dtype=dtype)
    a, _ = backend.activation_forward(x, "gelu")
    ra, _ = oracle.activation_forward(x.astype(np.float64), "gelu")
    check.close(a, ra, output="activation", dtype=dtype)


# ============================================================ bad inputs =====
def _lin_args(**over: Any) -> tuple:
    args = {"x": np.ones((2, 3)), "w": np.ones((4, 3)), "b": np.ones(4)}
    args.update(over)
    return (args["x"], args["w"], args["b"])


LINEAR_BAD = {
    "x_none": (_lin_args(x=None), DTypeError),
    "x_list": (_lin_args(x=[[1.0, 2.0, 3.0]]), DTypeError),
    "x_int": (_lin_args(x=np.ones((2, 3), dtype=np.int64)), DTypeError),
    "x_float16": (_lin_args(x=np.ones((2, 3), dtype=np.float16)), DTypeError),
    "w_int": (_lin_args(w=np.ones((4, 3), dtype=np.int32)), DTypeError),
    "b_list": (_lin_args(b=[1.0] * 4), DTypeError),
    "mixed_x32": (_lin_args(x=np.ones((2, 3), dtype=np.float32)), DTypeError),
    "mixed_b32": (_lin_args(b=np.ones(4, dtype=np.float32)), DTypeError),
    "x_rank0": (_lin_args(x=np.array(1.0)), ShapeError),
    "w_rank1": (_lin_args(w=np.ones(3)), ShapeError),
    "w_rank3": (_lin_args(w=np.ones((1, 4, 3))), ShapeError),
    "b_rank2": (_lin_args(b=np.ones((1, 4))), ShapeError),
    "b_wrong_size": (_lin_args(b=np.ones(3)), ShapeError),
    "in_mismatch": (_lin_args(w=np.ones((4, 5))), ShapeError),
    "w_in_out_layout": (_lin_args(w=np.ones((3, 4))), ShapeError),
    "x_no_rows": (_lin_args(x=np.ones((0, 3))), EmptyInputError),
    "x_no_features": (
        _lin_args(x=np.ones((2, 0)), w=np.ones((4, 0))),
        EmptyInputError,
    ),
    "w_no_outputs": (_lin_args(w=np.ones((0, 3)), b=np.ones(0)), EmptyInputError),
}


@pytest.mark.parametrize("case", LINEAR_BAD, ids=list(LINEAR_BAD))
def test_linear_forward_bad_inputs(backend, case):
    args, error = LINEAR_BAD[case]
    with pytest.raises(error):
        backend.linear_forward(*args)


def _bad_backward_cases(dy_shape: tuple[int, ...], other_cache: Any) -> dict:
    return {
        "dy_none": (lambda c: (None, c), DTypeError),
        "dy_int": (lambda c: (np.ones(dy_shape, dtype=np.int64), c), DTypeError),
        "dy_float32": (lambda c: (np.ones(dy_shape, dtype=np.float32), c), DTypeError),
        "dy_wrong_last": (
            lambda c: (np.ones((*dy_shape[:-1], dy_shape[-1] + 1)), c),
            ShapeError,
        ),
        "dy_wrong_lead": (lambda c: (np.ones((5, *dy_shape[1:])), c), ShapeError),
        "dy_rank": (lambda c: (np.ones(dy_shape[1:]), c), ShapeError),
        "cache_tuple": (lambda c: (np.ones(dy_shape), tuple(c)), DTypeError),
        "cache_other": (lambda c: (np.ones(dy_shape), other_cache), DTypeError),
    }


_FOREIGN = LayerNormCache(np.ones((2, 3)), np.ones(2), np.ones(3))
LINEAR_BACKWARD_BAD = _bad_backward_cases((2, 4), _FOREIGN)


@pytest.mark.parametrize("case", LINEAR_BACKWARD_BAD, ids=list(LINEAR_BACKWARD_BAD))
def test_linear_backward_bad_inputs(backend, case):
    _, cache = backend.linear_forward(*_lin_args())
    make, error = LINEAR_BACKWARD_BAD[case]
    with pytest.raises(error):
        backend.linear_backward(*make(cache))


@pytest.mark.parametrize(
    "kind", ["GELU", "tanh", "swish", "", None, "gelu_erf", "none", 1]
)
def test_activation_unknown_kind(backend, kind):
    with pytest.raises(ConfigError):
        backend.activation_forward(np.ones(3), kind)


ACTIVATION_BAD = {
    "x_none": (None, DTypeError),
    "x_list": ([1.0, 2.0], DTypeError),
    "x_int": (np.ones(3, dtype=np.int32), DTypeError),
    "x_bool": (np.ones(3, dtype=bool), DTypeError),
    "x_empty": (np.ones(0), EmptyInputError),
    "x_empty_rows": (np.ones((0, 4)), EmptyInputError),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", ACTIVATION_BAD, ids=list(ACTIVATION_BAD))
def test_activation_bad_inputs(backend, case, kind):
    x, error = ACTIVATION_BAD[case]
    with pytest.raises(error):
        backend.activation_forward(x, kind)


ACTIVATION_BACKWARD_BAD = _bad_backward_cases((2, 4), _FOREIGN)


@pytest.mark.parametrize(
    "case", ACTIVATION_BACKWARD_BAD, ids=list(ACTIVATION_BACKWARD_BAD)
)
def test_activation_backward_bad_inputs(backend, case):
    _, cache = backend.activation_forward(np.ones((2, 4)), "gelu")
    make, error = ACTIVATION_BACKWARD_BAD[case]
    with pytest.raises(error):
        backend.activation_backward(*make(cache))


def test_activation_backward_bad_cache_kind(backend):
    with pytest.raises(ConfigError):
        backend.activation_backward(np.ones(3), ActivationCache(np.ones(3), "swish"))


def _ln_args(**over: Any) -> tuple:
    args = {"x": np.ones((2, 3)), "weight": np.ones(3), "bias": np.zeros(3)}
    args.update(over)
    return (args["x"], args["weight"], args["bias"])


LAYERNORM_BAD = {
    "x_none": (_ln_args(x=None), DTypeError),
    "x_int": (_ln_args(x=np.ones((2, 3), dtype=np.int64)), DTypeError),
    "weight_none": (_ln_args(weight=None), DTypeError),
    "bias_list": (_ln_args(bias=[0.0] * 3), DTypeError),
    "mixed_weight32": (_ln_args(weight=np.ones(3, dtype=np.float32)), DTypeError),
    "mixed_x32": (_ln_args(x=np.ones((2, 3), dtype=np.float32)), DTypeError),
    "x_rank0": (_ln_args(x=np.array(1.0)), ShapeError),
    "weight_size": (_ln_args(weight=np.ones(4)), ShapeError),
    "bias_size": (_ln_args(bias=np.zeros(2)), ShapeError),
    "weight_rank2": (_ln_args(weight=np.ones((1, 3))), ShapeError),
    "x_no_rows": (_ln_args(x=np.ones((0, 3))), EmptyInputError),
    "x_no_features": (
        _ln_args(x=np.ones((2, 0)), weight=np.ones(0), bias=np.zeros(0)),
        EmptyInputError,
    ),
}


@pytest.mark.parametrize("case", LAYERNORM_BAD, ids=list(LAYERNORM_BAD))
def test_layernorm_bad_inputs(backend, case):
    args, error = LAYERNORM_BAD[case]
    with pytest.raises(error):
        backend.layernorm_forward(*args)


@pytest.mark.parametrize(
    "eps", [0.0, -1e-5, float("nan"), float("inf"), "1e-5", None, True]
)
def test_layernorm_bad_eps(backend, eps):
    with pytest.raises(ConfigError):
        backend.layernorm_forward(*_ln_args(), eps=eps)


LAYERNORM_BACKWARD_BAD = _bad_backward_cases(
    (2, 3), LinearCache(np.ones((2, 3)), np.ones((4, 3)), True)
)


@pytest.mark.parametrize(
    "case", LAYERNORM_BACKWARD_BAD, ids=list(LAYERNORM_BACKWARD_BAD)
)
def test_layernorm_backward_bad_inputs(backend, case):
    _, cache = backend.layernorm_forward(*_ln_args())
    make, error = LAYERNORM_BACKWARD_BAD[case]
    with pytest.raises(error):
        backend.layernorm_backward(*make(cache))


def _ffn_args(**over: Any) -> tuple:
    # C = 3, F = 5
    args = {
        "x": np.ones((2, 3)),
        "w_fc": np.ones((5, 3)),
        "b_fc": np.ones(5),
        "w_proj": np.ones((3, 5)),
        "b_proj": np.ones(3),
    }
    args.update(over)
    return tuple(args[k] for k in ("x", "w_fc", "b_fc", "w_proj", "b_proj"))


FFN_BAD = {
    "x_none": (_ffn_args(x=None), DTypeError),
    "x_int": (_ffn_args(x=np.ones((2, 3), dtype=np.int64)), DTypeError),
    "b_fc_int": (_ffn_args(b_fc=np.ones(5, dtype=np.int64)), DTypeError),
    "mixed_w_proj32": (_ffn_args(w_proj=np.ones((3, 5), dtype=np.float32)), DTypeError),
    "mixed_b_proj32": (_ffn_args(b_proj=np.ones(3, dtype=np.float32)), DTypeError),
    "x_rank0": (_ffn_args(x=np.array(1.0)), ShapeError),
    "w_fc_in_out_layout": (_ffn_args(w_fc=np.ones((3, 5))), ShapeError),
    "w_proj_in_out_layout": (_ffn_args(w_proj=np.ones((5, 3))), ShapeError),
    "w_proj_other_out": (
        _ffn_args(w_proj=np.ones((4, 5)), b_proj=np.ones(4)),
        ShapeError,
    ),
    "b_fc_size": (_ffn_args(b_fc=np.ones(3)), ShapeError),
    "b_proj_size": (_ffn_args(b_proj=np.ones(5)), ShapeError),
    "x_no_rows": (_ffn_args(x=np.ones((0, 3))), EmptyInputError),
    "hidden_zero": (
        _ffn_args(w_fc=np.ones((0, 3)), b_fc=np.ones(0), w_proj=np.ones((3, 0))),
        EmptyInputError,
    ),
}


@pytest.mark.parametrize("case", FFN_BAD, ids=list(FFN_BAD))
def test_ffn_bad_inputs(backend, case):
    args, error = FFN_BAD[case]
    with pytest.raises(error):
        backend.ffn_forward(*args)


@pytest.mark.parametrize("activation", ["GELU", "silu", None, "tanh"])
def test_ffn_unknown_activation(backend, activation):
    with pytest.raises(ConfigError):
        backend.ffn_forward(*_ffn_args(), activation=activation)


FFN_BACKWARD_BAD = _bad_backward_cases(
    (2, 3), LinearCache(np.ones((2, 3)), np.ones((3, 3)), True)
)


@pytest.mark.parametrize("case", FFN_BACKWARD_BAD, ids=list(FFN_BACKWARD_BAD))
def test_ffn_backward_bad_inputs(backend, case):
    _, cache = backend.ffn_forward(*_ffn_args())
    make, error = FFN_BACKWARD_BAD[case]
    with pytest.raises(error):
        backend.ffn_backward(*make(cache))


def test_ffn_backward_rejects_hidden_sized_dy(backend):
    _, cache = backend.ffn_forward(*_ffn_args())
    with pytest.raises(ShapeError):
        backend.ffn_backward(np.ones((2, 5)), cache)  # (..., F) instead of (..., C)


# ================================== determinism, mutation, fresh outputs =====
def _calls(backend: Any, rng: np.random.Generator, dtype: Any) -> dict[str, tuple]:
    """name -> (forward, backward, inputs, dy) for every function pair."""
    x = normal(rng, (3, 4, 16), dtype)
    lin = _linear_inputs(rng, (3, 4), 16, 17, dtype)
    ffn = _ffn_inputs(rng, (3, 4), 16, 33, dtype)
    weight, bias = normal(rng, (16,), dtype), normal(rng, (16,), dtype)
    calls: dict[str, tuple] = {
        "linear": (backend.linear_forward, backend.linear_backward, list(lin),
                   normal(rng, (3, 4, 17), dtype)),
        "layernorm": (backend.layernorm_forward, backend.layernorm_backward,
                      [x, weight, bias], normal(rng, (3, 4, 16), dtype)),
        "ffn": (backend.ffn_forward, backend.ffn_backward, ffn,
                normal(rng, (3, 4, 16), dtype)),
    }  # fmt: skip
    for kind in KINDS:

        def fwd(x_: np.ndarray, _kind: str = kind) -> Any:
            return backend.activation_forward(x_, _kind)

        calls[kind] = (
            fwd,
            backend.activation_backward,
            [x],
            normal(rng, x.shape, dtype),
        )
    return calls


CALL_NAMES = ("linear", "layernorm", "ffn", *KINDS)


def _flat(values: Any) -> list[np.ndarray]:
    """Every array in an output, a gradient tuple or a (nested) cache."""
    if isinstance(values, np.ndarray):
        return [values]
    if isinstance(values, tuple):
        return [a for v in values for a in _flat(v)]
    return []


@pytest.mark.parametrize("name", CALL_NAMES)
def test_forward_is_deterministic(backend, dtype, rng, check, name):
    forward, _, inputs, _ = _calls(backend, rng, dtype)[name]
    first, _ = forward(*inputs)
    second, _ = forward(*inputs)
    check.exact(second, first, output=name)


@pytest.mark.parametrize("name", CALL_NAMES)
def test_backward_is_deterministic(backend, dtype, rng, check, name):
    forward, backward, inputs, dy = _calls(backend, rng, dtype)[name]
    _, cache = forward(*inputs)
    first, second = _flat(backward(dy, cache)), _flat(backward(dy, cache))
    assert len(first) == len(second) > 0
    for a, b in zip(first, second, strict=True):
        check.exact(b, a, output=f"{name}.grad")


@pytest.mark.parametrize("name", CALL_NAMES)
def test_inputs_not_mutated(backend, dtype, rng, check, name):
    forward, backward, inputs, dy = _calls(backend, rng, dtype)[name]
    saved = [a.copy() for a in inputs]
    saved_dy = dy.copy()
    _, cache = forward(*inputs)
    cache_arrays = [a.copy() for a in _flat(cache)]
    backward(dy, cache)
    for before, after in zip(saved, inputs, strict=True):
        check.exact(after, before, output=f"{name}.input")
    check.exact(dy, saved_dy, output=f"{name}.dy")
    for before, after in zip(cache_arrays, _flat(cache), strict=True):
        check.exact(after, before, output=f"{name}.cache")


@pytest.mark.parametrize("name", CALL_NAMES)
def test_outputs_are_new_arrays(backend, dtype, rng, name):
    forward, backward, inputs, dy = _calls(backend, rng, dtype)[name]
    y, cache = forward(*inputs)
    grads = _flat(backward(dy, cache))
    for out in [y, *grads]:
        assert isinstance(out, np.ndarray) and out.dtype == dtype
        for arr in [*inputs, dy]:
            assert not np.shares_memory(out, arr), "an output aliases an input"
