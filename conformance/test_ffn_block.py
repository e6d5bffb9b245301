"""Conformance of the feed-forward block: linear, activation, linear.

Spec: ``cllm_spec.ffn``. ``ffn_forward`` and ``ffn_backward``: against the
float64 reference and the composition of the three functions, goldens, finite
differences, and the original project's feed-forward tests as value checks
(their mapping is in ``conformance/SEED_PARITY.md``).
"""

from __future__ import annotations

import numpy as np
import pytest

from cllm_spec.errors import ShapeError
from cllm_spec.protocols import FFNCache
from conformance.ffn_helpers import (
    GELU_AT,
    KINDS,
    SIZE_PAIRS,
    ffn_inputs,
    gelu_libm,
    linear_inputs,
)
from conformance.gradcheck import needs_float64
from conformance.strategies import as_oracle, normal


@pytest.mark.parametrize("activation", KINDS)
@pytest.mark.parametrize(("c", "f"), SIZE_PAIRS[::2])
def test_ffn_matches_oracle(backend, dtype, oracle, rng, check, c, f, activation):
    args = ffn_inputs(rng, (2, 3), c, f, dtype)
    y, _ = backend.ffn_forward(*args, activation=activation)
    ref, _ = oracle.ffn_forward(*as_oracle(*args), activation=activation)
    check.close(y, ref, output="ffn", dtype=dtype)


@pytest.mark.parametrize("activation", KINDS)
@pytest.mark.parametrize(("c", "f"), SIZE_PAIRS[1::2])
def test_ffn_backward_matches_oracle(
    backend, dtype, oracle, rng, check, c, f, activation
):
    args = ffn_inputs(rng, (2, 3), c, f, dtype)
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
    x, w_fc, b_fc, w_proj, b_proj = ffn_inputs(rng, (4,), 16, 33, dtype)
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
    needs_float64(backend)
    for _ in range(100):  # redraw until no relu pre-activation sits on the kink
        x, w_fc, b_fc, w_proj, b_proj = ffn_inputs(rng, (2, 2), 3, 5, np.float64)
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
    args = ffn_inputs(rng, (2, 5), 16, 64, dtype)
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
    assert 0.16 * gelu_libm(0.04) == pytest.approx(0.003302101995858117, rel=1e-14)


def test_chain_asymmetric_dims_32_128_64(backend, dtype, oracle, rng, check):
    # the original's 32 -> 128 -> 64 network as linear, gelu, linear
    x, w1, b1 = linear_inputs(rng, (3,), 32, 128, dtype)
    _, w2, b2 = linear_inputs(rng, (), 128, 64, dtype)
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
    args = ffn_inputs(rng, (4,), 16, 16, dtype)
    y, _ = backend.ffn_forward(*args)
    for row in range(4):  # each row alone gives the same answer as in the batch
        y_row, _ = backend.ffn_forward(args[0][row], *args[1:])
        check.close(y_row, y[row].astype(np.float64), output="ffn", dtype=dtype)


@pytest.mark.parametrize("value", [100.0, 1e4, -1e4])
def test_ffn_large_inputs_match_oracle(backend, dtype, oracle, rng, check, value):
    args = ffn_inputs(rng, (3,), 8, 16, dtype)
    args[0] = np.full((3, 8), value, dtype=dtype)
    y, _ = backend.ffn_forward(*args)
    assert np.all(np.isfinite(y))
    ref, _ = oracle.ffn_forward(*as_oracle(*args))
    check.close(y, ref, output="ffn", dtype=dtype)


@pytest.mark.parametrize("activation", KINDS)
def test_ffn_zero_input(backend, dtype, rng, check, activation):
    _, w_fc, b_fc, w_proj, b_proj = ffn_inputs(rng, (), 8, 16, dtype)
    x = np.zeros((2, 8), dtype=dtype)
    y0, _ = backend.ffn_forward(x, w_fc, None, w_proj, None, activation=activation)
    assert y0.dtype == dtype and np.all(y0 == 0)  # act(0) = 0 exactly
    y, _ = backend.ffn_forward(x, w_fc, b_fc, w_proj, b_proj, activation=activation)
    a, _ = backend.activation_forward(b_fc, activation)
    expected = w_proj.astype(np.float64) @ a + b_proj  # (C,)
    check.close(y, np.broadcast_to(expected, (2, 8)), output="ffn", dtype=dtype)


@pytest.mark.parametrize(("c", "f", "rows"), [(4, 8, 5), (64, 256, 3), (512, 2048, 1)])
def test_ffn_original_dimensions(backend, dtype, oracle, rng, check, c, f, rows):
    args = ffn_inputs(rng, (rows,), c, f, dtype)
    y, _ = backend.ffn_forward(*args)
    ref, _ = oracle.ffn_forward(*as_oracle(*args))
    check.close(y, ref, output="ffn", dtype=dtype)


def test_ffn_large_batch(backend, dtype, oracle, rng, check):
    args = ffn_inputs(rng, (64,), 32, 128, dtype)
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
