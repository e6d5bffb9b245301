"""Conformance of the activations relu, gelu (erf) and gelu_tanh.

Spec: ``cllm_spec.ffn``. ``activation_forward`` and ``activation_backward``:
against the float64 reference, full-precision goldens and libm on a dense grid,
the difference of the two gelu forms pinned, bounds, special values and
saturation, and finite differences.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cllm_spec.protocols import ActivationCache
from conformance.ffn_helpers import (
    GELU_AT,
    GELU_GRAD_AT,
    GELU_MINUS_TANH_AT,
    GELU_TANH_AT,
    GELU_TANH_GRAD_AT,
    GOLDEN_GRAD,
    GOLDEN_X,
    KINDS,
    derived_tol,
    gelu_grad_libm,
    gelu_libm,
    gelu_tanh_grad_libm,
    gelu_tanh_libm,
)
from conformance.gradcheck import needs_float64
from conformance.strategies import EDGE_SIZES, FIXTURE_OK, normal

GELU_KINDS = ("gelu", "gelu_tanh")


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
        assert g == pytest.approx(gelu_libm(x), rel=2e-15, abs=1e-300)
        assert gt == pytest.approx(gelu_tanh_libm(x), rel=2e-15, abs=1e-300)
        assert d == pytest.approx(g - gt, rel=1e-11, abs=1e-300)
    for x, dg, dgt in zip(GOLDEN_X, GELU_GRAD_AT, GELU_TANH_GRAD_AT, strict=True):
        # the derivatives cancel near their zero at x = -0.75: a few more ulp
        assert dg == pytest.approx(gelu_grad_libm(x), rel=1e-14)
        assert dgt == pytest.approx(gelu_tanh_grad_libm(x), rel=1e-14)


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
    tol = derived_tol("activation", dtype)
    check.close(diff, np.array(GELU_MINUS_TANH_AT), output="gelu_minus_tanh", tol=tol)


def test_gelu_matches_libm_on_a_dense_grid(backend, dtype, rng, check):
    grid = np.concatenate(
        [np.linspace(-10.0, 10.0, 4001), 3.0 * rng.standard_normal(1000)]
    )
    x = grid.astype(dtype)
    y, _ = backend.activation_forward(x, "gelu")
    expected = np.array([gelu_libm(float(v)) for v in x])
    check.close(y, expected, output="gelu_vs_libm", dtype=dtype)


def test_gelu_tanh_matches_libm_on_a_dense_grid(backend, dtype, rng, check):
    grid = np.concatenate(
        [np.linspace(-10.0, 10.0, 4001), 3.0 * rng.standard_normal(1000)]
    )
    x = grid.astype(dtype)
    y, _ = backend.activation_forward(x, "gelu_tanh")
    expected = np.array([gelu_tanh_libm(float(v)) for v in x])
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


@FIXTURE_OK
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
    needs_float64(backend)
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
