"""Conformance of the regression losses mse, l1 and huber, forward and backward.

Spec: ``cllm_spec.losses``. Goldens for every reduction and for huber's delta,
the float64 reference and the closed form, finite differences away from the
kinks, rank-0 inputs, a NaN of the cache kept by the backward, and repeated
calls. ``test_lossNN_*`` is test NN of the seed project's
``tests/unit/test_loss.c`` as an exact numeric check; ``test_bug14_*`` is a
regression for its bug 14 (loss API inconsistencies).
"""

from __future__ import annotations

import numpy as np
import pytest

from cllm_spec.protocols import RegressionLossCache
from conformance.gradcheck import needs_float64
from conformance.losses_helpers import (
    KINDS,
    REDUCTIONS,
    regression,
    upstream,
)
from conformance.strategies import EDGE_SIZES, as_oracle, normal


# =================================================== regression losses ====
def huber_np(d: np.ndarray, delta: float = 1.0) -> np.ndarray:
    a = np.abs(d)
    return np.where(a < delta, 0.5 * d * d, delta * (a - 0.5 * delta))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_loss04_mse_forward_golden(backend, dtype, check, reduction):
    # pred = 0..5, target = pred + 1 over (2, 3): every d^2 = 1 -> mean 1, sum 6
    pred = np.arange(6, dtype=dtype).reshape(2, 3)
    loss, _ = backend.mse_forward(pred, pred + 1, reduction=reduction)
    expected = {"mean": np.array(1.0), "sum": np.array(6.0), "none": np.ones((2, 3))}
    check.close(loss, expected[reduction], f"mse.{reduction}", dtype=dtype)


def test_loss05_mse_backward_golden(backend, dtype, check):
    # d = -1 everywhere, n = 6: dpred = 2 * (-1) / 6 = -1/3 (mean), -2 (sum, none)
    pred = np.arange(6, dtype=dtype).reshape(2, 3)
    for reduction, dloss, value in [
        ("mean", np.array(1.0, dtype), -1 / 3),
        ("sum", np.array(1.0, dtype), -2.0),
        ("none", np.full((2, 3), 0.5, dtype), -1.0),
    ]:
        _, cache = backend.mse_forward(pred, pred + 1, reduction=reduction)
        grad = backend.mse_backward(dloss, cache)
        check.close(grad, np.full((2, 3), value), f"mse.dpred.{reduction}", dtype=dtype)


def test_loss06_mae_forward_golden(backend, dtype, check):
    # |d| = 2 everywhere -> mean 2.0, sum 12.0
    pred = np.arange(6, dtype=dtype).reshape(2, 3)
    mean, _ = backend.l1_forward(pred, pred - 2)
    total, _ = backend.l1_forward(pred, pred + 2, reduction="sum")
    check.close(mean, np.array(2.0), "l1.mean", dtype=dtype)
    check.close(total, np.array(12.0), "l1.sum", dtype=dtype)


def test_loss07_mae_backward_golden(backend, dtype, check):
    # pred = target + 1: sign(d) / n = 1/6; pred = target - 1: -1/6
    target = np.arange(6, dtype=dtype).reshape(2, 3)
    one = np.array(1.0, dtype=dtype)
    _, cache = backend.l1_forward(target + 1, target)
    check.close(
        backend.l1_backward(one, cache), np.full((2, 3), 1 / 6), "l1.dpred", dtype=dtype
    )
    _, cache = backend.l1_forward(target - 1, target)
    check.close(backend.l1_backward(one, cache), np.full((2, 3), -1 / 6), "l1.dpred")


def test_l1_gradient_at_zero_difference_is_zero(backend, dtype, check):
    # sign(0) = 0: d = [-2, 0, 3] -> dpred = [-1, 0, 1] (sum)
    pred = np.array([1.0, 5.0, 4.0], dtype=dtype)
    target = np.array([3.0, 5.0, 1.0], dtype=dtype)
    _, cache = backend.l1_forward(pred, target, reduction="sum")
    grad = backend.l1_backward(np.array(1.0, dtype=dtype), cache)
    check.exact(grad, np.array([-1.0, 0.0, 1.0], dtype=dtype), "l1.dpred")


@pytest.mark.parametrize("kind", ["mse", "l1", "huber"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("n", [1, 17, 33])
def test_regression_backward_keeps_nan_of_the_cache(
    backend, oracle, dtype, rng, kind, reduction, n
):
    # the forward refuses NaN, but a cache is plain data: a NaN in diff must come
    # back NaN (the reference's sign, clip and product), never as 0 or +-1
    diff = normal(rng, (n,), dtype)
    diff[:: max(1, n // 3)] = np.nan  # lanes at the start, middle and tail
    cache = RegressionLossCache(diff, reduction, 1.0)
    dloss = normal(rng, (n,) if reduction == "none" else (), dtype)
    got = getattr(backend, f"{kind}_backward")(dloss, cache)
    want = getattr(oracle, f"{kind}_backward")(
        *as_oracle(dloss), RegressionLossCache(*as_oracle(diff), reduction, 1.0)
    )
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[np.isnan(diff)]).all()


def test_loss08_huber_forward_golden(backend, dtype, check):
    # d = 0.5 < delta = 1: 0.5 * 0.25 = 0.125 (the seed's case)
    pred = np.full((2, 3), 0.5, dtype=dtype)
    loss, _ = backend.huber_forward(pred, np.zeros_like(pred))
    check.close(loss, np.array(0.125), "huber.mean", dtype=dtype)
    # d = [-3, -1, -0.5, 0, 0.5, 1, 3], delta 1:
    #   [1 * (3 - 0.5), 0.5, 0.125, 0, 0.125, 0.5, 2.5], sum 6.25, mean 6.25 / 7
    d = np.array([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0], dtype=dtype)
    none, _ = backend.huber_forward(d, np.zeros_like(d), reduction="none")
    check.close(none, np.array([2.5, 0.5, 0.125, 0.0, 0.125, 0.5, 2.5]), "huber.none")
    mean, _ = backend.huber_forward(d, np.zeros_like(d))
    check.close(mean, np.array(0.8928571428571429), "huber.mean")
    # delta 2: |d| = 3 -> 2 * (3 - 1) = 4, |d| <= 1 as before:
    #   4 + 0.5 + 0.125 + 0 + 0.125 + 0.5 + 4 = 9.25
    total, _ = backend.huber_forward(d, np.zeros_like(d), delta=2.0, reduction="sum")
    check.close(total, np.array(9.25), "huber.sum")


def test_loss09_huber_backward_golden(backend, dtype, check):
    # dpred = clip(d, -delta, delta) / n
    d = np.array([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0], dtype=dtype)
    _, cache = backend.huber_forward(d, np.zeros_like(d))
    grad = backend.huber_backward(np.array(1.0, dtype=dtype), cache)
    expected = np.array([-1.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.0]) / 7
    check.close(grad, expected, "huber.dpred", dtype=dtype)
    _, cache = backend.huber_forward(d, np.zeros_like(d), delta=2.0, reduction="sum")
    grad = backend.huber_backward(np.array(3.0, dtype=dtype), cache)
    check.close(
        grad, 3 * np.array([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0]), "huber.dpred"
    )
    # the seed's case: d = 0.5 everywhere, n = 6 -> 0.5 / 6
    pred = np.full((2, 3), 0.5, dtype=dtype)
    _, cache = backend.huber_forward(pred, np.zeros_like(pred))
    grad = backend.huber_backward(np.array(1.0, dtype=dtype), cache)
    check.close(grad, np.full((2, 3), 0.5 / 6), "huber.dpred")


def test_bug14_huber_default_delta_is_one(backend, dtype, check):
    d = np.array([-3.0, -0.25, 2.0], dtype=dtype)
    default, _ = backend.huber_forward(d, np.zeros_like(d), reduction="none")
    check.close(default, np.array([2.5, 0.03125, 1.5]), "huber.none", dtype=dtype)


@pytest.mark.parametrize("size", EDGE_SIZES)
@pytest.mark.parametrize("kind", KINDS)
def test_regression_forward_backward_match_oracle(
    backend, dtype, oracle, rng, check, kind, size
):
    pred = normal(rng, (size,), dtype, scale=2.0)
    target = normal(rng, (size,), dtype, scale=2.0)
    forward, backward = regression(backend, kind)
    o_forward, o_backward = regression(oracle, kind)
    for reduction in REDUCTIONS:
        dloss = upstream(rng, reduction, (size,), dtype)
        loss, cache = forward(pred, target, reduction=reduction)
        grad = backward(dloss, cache)
        pred64, target64, dloss64 = as_oracle(pred, target, dloss)
        loss64, cache64 = o_forward(pred64, target64, reduction=reduction)
        check.close(loss, loss64, f"{kind}.{reduction}", dtype=dtype)
        check.close(grad, o_backward(dloss64, cache64), f"{kind}.dpred", dtype=dtype)


@pytest.mark.parametrize("kind", KINDS)
def test_regression_matches_closed_form_multidim(backend, dtype, rng, check, kind):
    pred = normal(rng, (3, 4, 5), dtype)
    target = normal(rng, (3, 4, 5), dtype)
    d = pred.astype(np.float64) - target.astype(np.float64)
    elementwise = {"mse": d * d, "l1": np.abs(d), "huber": huber_np(d)}[kind]
    forward, _ = regression(backend, kind)
    none, _ = forward(pred, target, reduction="none")
    mean, _ = forward(pred, target)
    check.close(none, elementwise, f"{kind}.none", dtype=dtype)
    check.close(mean, elementwise.mean(), f"{kind}.mean", dtype=dtype)


def _away_from_kinks(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Differences in [-3, 3] at least 0.05 away from 0 and +-1 (l1, huber kinks)."""
    d = rng.uniform(0.05, 2.95, size=shape)
    d = np.where(np.abs(d - 1.0) < 0.05, d + 0.1, d)
    return d * rng.choice([-1.0, 1.0], size=shape)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_regression_backward_matches_finite_differences(
    backend, rng, check, kind, reduction
):
    needs_float64(backend)
    shape = (3, 4)
    target = normal(rng, shape, np.float64)
    pred = target + _away_from_kinks(rng, shape)
    dloss = upstream(rng, reduction, shape, np.float64)
    forward, backward = regression(backend, kind)
    _, cache = forward(pred, target, reduction=reduction)
    dpred = backward(dloss, cache)
    check.gradcheck(
        lambda p, t: forward(p, t, reduction=reduction)[0],
        [pred, target],
        dloss,
        {0: dpred, 1: -dpred},  # d/dtarget = -dpred, as documented
        f"{kind}.dpred",
    )


def test_huber_gradcheck_custom_delta(backend, rng, check):
    needs_float64(backend)
    target = normal(rng, (10,), np.float64)
    pred = target + 2.5 * _away_from_kinks(rng, (10,))  # |d| away from 0 and 2.5
    _, cache = backend.huber_forward(pred, target, delta=2.5, reduction="sum")
    dloss = np.array(0.7)
    check.gradcheck(
        lambda p: backend.huber_forward(p, target, delta=2.5, reduction="sum")[0],
        [pred],
        dloss,
        {0: backend.huber_backward(dloss, cache)},
        "huber.dpred",
    )


@pytest.mark.parametrize("kind", KINDS)
def test_regression_rank0_inputs(backend, dtype, check, kind):
    forward, backward = regression(backend, kind)
    loss, cache = forward(np.array(3.0, dtype), np.array(1.0, dtype), reduction="none")
    expected = {"mse": 4.0, "l1": 2.0, "huber": 1.5}[kind]
    check.close(loss, np.array(expected), f"{kind}.none", dtype=dtype)
    grad = backward(np.array(1.0, dtype), cache)
    check.close(
        grad,
        np.array({"mse": 4.0, "l1": 1.0, "huber": 1.0}[kind]),
        f"{kind}.dpred",
        dtype=dtype,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_regression_deterministic_and_pure(backend, dtype, rng, check, kind):
    pred = normal(rng, (31,), dtype)
    target = normal(rng, (31,), dtype)
    dloss = normal(rng, (31,), dtype)
    saved = (pred.copy(), target.copy(), dloss.copy())
    forward, backward = regression(backend, kind)
    loss1, cache1 = forward(pred, target, reduction="none")
    loss2, cache2 = forward(pred, target, reduction="none")
    check.exact(loss1, loss2, kind)
    check.exact(backward(dloss, cache1), backward(dloss, cache2), f"{kind}.dpred")
    mean1, _ = forward(pred, target)
    check.exact(mean1, forward(pred, target)[0], f"{kind}.mean")
    for name, now, before in zip(
        ("pred", "target", "dloss"), (pred, target, dloss), saved, strict=True
    ):
        check.exact(now, before, f"{name} unchanged")
