"""Conformance of softmax and log softmax, forward and backward.

Spec: ``cllm_spec.losses``. ``softmax_*`` and ``log_softmax_*``: goldens, the
float64 reference, finite differences, probabilities and shift invariance, logit
gaps, non-finite inputs as PyTorch, and repeated calls. ``test_lossNN_*`` is
test NN of the seed project's ``tests/unit/test_loss.c`` as an exact numeric
check; ``test_bug11_*`` is a regression for its bug 11 (broken exp/log).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conformance.gradcheck import needs_float64
from conformance.strategies import EDGE_SIZES, FIXTURE_OK, as_oracle, normal


# ====================================================== softmax family ====
def test_loss11_softmax_golden_rows_sum_to_one(backend, dtype, check):
    # softmax([1, 2, 3]) = exp(k - lse) with lse = log(e + e^2 + e^3) = 3.40760596444438
    x = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, 1000.0]], dtype=dtype)
    y, _ = backend.softmax_forward(x)
    expected = [
        [0.09003057317038048, 0.2447284710547977, 0.665240955774822],
        [1 / 3, 1 / 3, 1 / 3],
    ]
    check.close(y, np.array(expected), "softmax", dtype=dtype)
    check.close(y.sum(axis=-1), np.ones(2), "softmax.rowsum")


def test_loss10_log_softmax_golden_exp_sums_to_one(backend, dtype, check):
    # log_softmax([1, 2, 3]) = k - 3.40760596444438
    x = np.array([1.0, 2.0, 3.0], dtype=dtype)
    y, _ = backend.log_softmax_forward(x)
    expected = [-2.40760596444438, -1.40760596444438, -0.40760596444438]
    check.close(y, np.array(expected), "log_softmax", dtype=dtype)
    check.close(np.exp(y).sum(), np.float64(1.0), "log_softmax.expsum")


@pytest.mark.parametrize("v", EDGE_SIZES)
def test_softmax_forward_backward_match_oracle(backend, dtype, oracle, rng, check, v):
    x = normal(rng, (2, 3, v), dtype, scale=4.0)
    dy = normal(rng, (2, 3, v), dtype)
    y, cache = backend.softmax_forward(x)
    dx = backend.softmax_backward(dy, cache)
    x64, dy64 = as_oracle(x, dy)
    y64, cache64 = oracle.softmax_forward(x64)
    check.close(y, y64, "softmax", dtype=dtype)
    check.close(dx, oracle.softmax_backward(dy64, cache64), "softmax.dx", dtype=dtype)


@pytest.mark.parametrize("v", EDGE_SIZES)
def test_log_softmax_forward_backward_match_oracle(
    backend, dtype, oracle, rng, check, v
):
    x = normal(rng, (4, v), dtype, scale=4.0)
    dy = normal(rng, (4, v), dtype)
    y, cache = backend.log_softmax_forward(x)
    dx = backend.log_softmax_backward(dy, cache)
    x64, dy64 = as_oracle(x, dy)
    y64, cache64 = oracle.log_softmax_forward(x64)
    check.close(y, y64, "log_softmax", dtype=dtype)
    check.close(
        dx, oracle.log_softmax_backward(dy64, cache64), "log_softmax.dx", dtype=dtype
    )


@pytest.mark.parametrize("kind", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 4)])
def test_softmax_family_gradcheck(backend, rng, check, kind, shape):
    needs_float64(backend)
    forward = getattr(backend, f"{kind}_forward")
    backward = getattr(backend, f"{kind}_backward")
    x = normal(rng, shape, np.float64, scale=2.0)
    dy = normal(rng, shape, np.float64)
    _, cache = forward(x)
    check.gradcheck(
        lambda a: forward(a)[0], [x], dy, {0: backward(dy, cache)}, f"{kind}.dx"
    )


@FIXTURE_OK
@given(
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(1, 5),
    v=st.sampled_from(EDGE_SIZES),
    scale=st.sampled_from([0.1, 1.0, 30.0]),
)
def test_softmax_properties(backend, dtype, oracle, check, seed, rows, v, scale):
    """Rows are probabilities, log_softmax = log(softmax), shift invariance."""
    rng = np.random.default_rng(seed)
    # on a grid of 1/64 with |x| < 2^7: x + 16 is exact in float32 and float64
    x = (
        np.round(np.clip(normal(rng, (rows, v), np.float64, scale), -99, 99) * 64) / 64
    ).astype(dtype)
    y, _ = backend.softmax_forward(x)
    logy, _ = backend.log_softmax_forward(x)
    assert np.all((y >= 0) & (y <= 1))
    check.close(y.sum(axis=-1), np.ones(rows), "softmax.rowsum")
    check.close(logy, oracle.log_softmax_forward(*as_oracle(x))[0], "log_softmax")
    # the shift is exact, so softmax(x + 16) must equal softmax(x)
    shifted, _ = backend.softmax_forward((x + dtype.type(16)).astype(dtype))
    check.close(shifted, oracle.softmax_forward(*as_oracle(x))[0], "softmax")


@pytest.mark.parametrize("gap", [1.0, 8.0, 9.0, 100.0, 1e4])
def test_bug11_softmax_nonnegative_at_logit_gap(backend, dtype, check, gap):
    # softmax([0, -gap]) = [1 / (1 + e^-gap), e^-gap / (1 + e^-gap)]
    y, _ = backend.softmax_forward(np.array([0.0, -gap], dtype=dtype))
    t = math.exp(-gap)
    assert np.all(y >= 0)
    check.close(y, np.array([1 / (1 + t), t / (1 + t)]), "softmax", dtype=dtype)


def test_loss13_softmax_nonfinite_follows_pytorch(backend, dtype, check):
    inf, nan = np.inf, np.nan
    x = np.array(
        [[-inf, 0.0, 0.0], [inf, 0.0, 0.0], [nan, 0.0, 1.0], [-inf, -inf, -inf]],
        dtype=dtype,
    )
    y, _ = backend.softmax_forward(x)
    logy, _ = backend.log_softmax_forward(x)
    # -inf gets probability 0; a row with +inf, NaN or only -inf is all NaN
    expected = [[0.0, 0.5, 0.5], [nan] * 3, [nan] * 3, [nan] * 3]
    check.close(y, np.array(expected), "softmax", dtype=dtype)
    log_half = math.log(0.5)
    expected_log = [[-inf, log_half, log_half], [nan] * 3, [nan] * 3, [nan] * 3]
    check.close(logy, np.array(expected_log), "log_softmax", dtype=dtype)


@pytest.mark.parametrize("kind", ["softmax", "log_softmax"])
def test_softmax_family_deterministic_and_pure(backend, dtype, rng, check, kind):
    x = normal(rng, (5, 17), dtype)
    dy = normal(rng, (5, 17), dtype)
    x0, dy0 = x.copy(), dy.copy()
    forward = getattr(backend, f"{kind}_forward")
    backward = getattr(backend, f"{kind}_backward")
    y1, c1 = forward(x)
    y2, c2 = forward(x)
    check.exact(y1, y2, kind)
    check.exact(backward(dy, c1), backward(dy, c2), f"{kind}.dx")
    check.exact(x, x0, "x unchanged")
    check.exact(dy, dy0, "dy unchanged")
