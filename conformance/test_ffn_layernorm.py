"""Conformance of layer norm, forward and backward.

Spec: ``cllm_spec.ffn``. ``layernorm_forward`` and ``layernorm_backward``:
against the float64 reference, goldens that pin the biased variance and eps
inside the root, constant rows and a huge offset, the properties of the
normalized rows and of the backward, and finite differences.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from cllm_spec.protocols import LayerNormCache
from conformance.ffn_helpers import derived_tol
from conformance.gradcheck import needs_float64
from conformance.strategies import EDGE_SIZES, as_oracle, normal


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
    y64, tol = y.astype(np.float64), derived_tol("layernorm", dtype)
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
    dx64, tol = dx.astype(np.float64), derived_tol("layernorm.dx", dtype)
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
    needs_float64(backend)
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
