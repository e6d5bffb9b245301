"""Conformance of the losses component (spec: ``cllm_spec.losses``).

Test names carry the origin of each check: ``test_lossNN_*`` is the NN-th test of
the seed project's ``tests/unit/test_loss.c`` turned into an exact numeric check,
``test_bug11_*`` / ``test_bug14_*`` are regressions for the seed's known bugs 11
(broken exp/log: negative cross-entropy) and 14 (loss API inconsistencies).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cllm_spec.errors import (
    ConfigError,
    DTypeError,
    EmptyInputError,
    IdRangeError,
    NonFiniteError,
    ShapeError,
)
from cllm_spec.protocols import RegressionLossCache
from conformance.strategies import EDGE_SIZES, as_oracle, normal

REDUCTIONS = ("mean", "sum", "none")
HYPOTHESIS_WITH_FIXTURES = settings(
    # `check` is stateless between examples; keep the profile's too_slow waiver
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

# Logits and targets of the seed's Loss tests 2, 3 and 12:
#   row 0: exp(2) + exp(1) + exp(0.1) = 7.389056 + 2.718282 + 1.105171 = 11.212509
#          lse0 = log(11.212509) = 2.4170300162778333, loss0 = lse0 - 2
#   row 1: exp(0.5) + exp(2.5) + exp(0.2) = 1.648721 + 12.182494 + 1.221403 = 15.052618
#          lse1 = log(15.052618) = 2.7115519288617866, loss1 = lse1 - 2.5
SEED_LOGITS = [[2.0, 1.0, 0.1], [0.5, 2.5, 0.2]]
SEED_TARGETS = [0, 1]
SEED_ROW_LOSS = [0.4170300162778333, 0.21155192886178664]
SEED_MEAN_LOSS = 0.31429097256981  # (loss0 + loss1) / 2
# p = exp(logit - lse) per row
SEED_PROBS = [
    [0.659001138885968, 0.24243297070471395, 0.0985658904093182],
    [0.10953053295069427, 0.8093272525184521, 0.08114221453085362],
]


def skip_unless_float64(backend: Any) -> None:
    if np.dtype(np.float64) not in {np.dtype(d) for d in backend.dtypes}:
        pytest.skip(f"{backend.name} has no float64; finite differences need it")


def upstream(
    rng: np.random.Generator, reduction: str, shape: tuple[int, ...], dtype: Any
) -> np.ndarray:
    """A random dloss: 0-d for mean and sum, ``shape`` for none."""
    # np.asarray: a 0-d draw comes back as a NumPy scalar, not an ndarray
    return np.asarray(normal(rng, shape if reduction == "none" else (), dtype))


def ce_inputs(
    rng: np.random.Generator, n: int, v: int, dtype: Any, *, ignored: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Logits of scale 3 and targets with the first ``ignored`` rows set to -100."""
    logits = normal(rng, (n, v), dtype, scale=3.0)
    targets = rng.integers(0, v, size=n).astype(np.int64)
    targets[:ignored] = -100
    return logits, targets


def ref_log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax in float64, written out independently of any backend."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def smoothed_target(targets: np.ndarray, v: int, eps: float) -> np.ndarray:
    """q = (1 - e) onehot(y) + e / V, written out independently of any backend."""
    q = np.full((targets.size, v), eps / v)
    for i, y in enumerate(targets):  # tiny test arrays
        if 0 <= y < v:
            q[i, y] += 1.0 - eps
    return q


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
    skip_unless_float64(backend)
    forward = getattr(backend, f"{kind}_forward")
    backward = getattr(backend, f"{kind}_backward")
    x = normal(rng, shape, np.float64, scale=2.0)
    dy = normal(rng, shape, np.float64)
    _, cache = forward(x)
    check.gradcheck(
        lambda a: forward(a)[0], [x], dy, {0: backward(dy, cache)}, f"{kind}.dx"
    )


@HYPOTHESIS_WITH_FIXTURES
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


SOFTMAX_BAD = [
    ("int", lambda dt: np.ones((2, 3), dtype=np.int64), DTypeError),
    ("float16", lambda dt: np.ones((2, 3), dtype=np.float16), DTypeError),
    ("list", lambda dt: [[1.0, 2.0]], DTypeError),
    ("rank0", lambda dt: np.array(1.0, dtype=dt), ShapeError),
    ("no_rows", lambda dt: np.ones((0, 3), dtype=dt), EmptyInputError),
    ("no_classes", lambda dt: np.ones((3, 0), dtype=dt), EmptyInputError),
]


@pytest.mark.parametrize("kind", ["softmax", "log_softmax"])
@pytest.mark.parametrize(
    ("bad", "make", "error"), SOFTMAX_BAD, ids=[b[0] for b in SOFTMAX_BAD]
)
def test_softmax_family_bad_inputs(backend, dtype, kind, bad, make, error):
    with pytest.raises(error):
        getattr(backend, f"{kind}_forward")(make(dtype))


@pytest.mark.parametrize("kind", ["softmax", "log_softmax"])
def test_softmax_family_backward_bad_dy(backend, dtype, kind):
    x = np.ones((2, 3), dtype=dtype)
    _, cache = getattr(backend, f"{kind}_forward")(x)
    backward = getattr(backend, f"{kind}_backward")
    other = np.float32 if dtype == np.float64 else np.float64
    with pytest.raises(DTypeError):
        backward(np.ones((2, 3), dtype=other), cache)
    with pytest.raises(DTypeError):
        backward(np.ones((2, 3), dtype=np.int32), cache)
    with pytest.raises(ShapeError):
        backward(np.ones((2, 4), dtype=dtype), cache)
    with pytest.raises(ShapeError):
        backward(np.ones((3,), dtype=dtype), cache)


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


# ======================================================= cross-entropy ====
@pytest.mark.parametrize("target_dtype", [np.int32, np.int64])
def test_loss02_ce_forward_golden(backend, dtype, check, target_dtype):
    logits = np.array(SEED_LOGITS, dtype=dtype)
    targets = np.array(SEED_TARGETS, dtype=target_dtype)
    for reduction, expected in [
        ("mean", SEED_MEAN_LOSS),
        ("sum", sum(SEED_ROW_LOSS)),
        ("none", SEED_ROW_LOSS),
    ]:
        loss, _ = backend.cross_entropy_forward(logits, targets, reduction=reduction)
        check.close(loss, np.array(expected), f"cross_entropy.{reduction}", dtype=dtype)


def test_loss03_ce_backward_golden_rows_sum_to_zero(backend, dtype, check):
    # mean over N = 2: dlogits[i] = (p_i - onehot(y_i)) / 2
    logits = np.array(SEED_LOGITS, dtype=dtype)
    loss, cache = backend.cross_entropy_forward(logits, np.array(SEED_TARGETS))
    grad = backend.cross_entropy_backward(np.array(1.0, dtype=dtype), cache)
    expected = (np.array(SEED_PROBS) - np.eye(3)[SEED_TARGETS]) / 2
    check.close(grad, expected, "cross_entropy.dlogits", dtype=dtype)
    check.close(grad.sum(axis=1), np.zeros(2), "cross_entropy.dlogits.rowsum")


def test_loss12_label_smoothing_is_eps_over_v(backend, dtype, check):
    # e = 0.1, V = 3, row 0 of the seed logits, target 0:
    #   q = [1 - e + e/3, e/3, e/3] = [0.9333.., 0.0333.., 0.0333..]
    #   -log p = lse0 - z = [0.41703, 1.41703, 2.31703], sum 4.1510900488335
    #   loss = 0.9 * 0.41703002 + (0.1 / 3) * 4.15109005 = 0.5136966829445
    # PyTorch's e/V convention; the seed's e/(V-1) would give 0.5620300162778333.
    logits = np.array(SEED_LOGITS[:1], dtype=dtype)
    loss, cache = backend.cross_entropy_forward(
        logits, np.array([0]), label_smoothing=0.1, reduction="sum"
    )
    check.close(loss, np.array(0.5136966829445), "cross_entropy.smoothed", dtype=dtype)
    grad = backend.cross_entropy_backward(np.array(1.0, dtype=dtype), cache)
    q = np.array([[1 - 0.1 + 0.1 / 3, 0.1 / 3, 0.1 / 3]])
    check.close(grad, np.array(SEED_PROBS[:1]) - q, "cross_entropy.dlogits")


def test_ce_label_smoothing_one_is_uniform_target(backend, dtype, check):
    # e = 1: loss = mean_c(-log p_c) = 4.1510900488335 / 3, whatever the target
    logits = np.array(SEED_LOGITS[:1] * 3, dtype=dtype)
    loss, _ = backend.cross_entropy_forward(
        logits, np.array([0, 1, 2]), label_smoothing=1.0, reduction="none"
    )
    check.close(loss, np.full(3, 1.3836966829444999), "cross_entropy.smoothed")


def test_loss16_ce_with_masked_row_as_ignore_index(backend, dtype, check):
    # logits [[1, 0], [5, -5], [0, 2]], targets [0, ignored, 1]:
    #   row 0: log(1 + e^-1) = 0.31326168751822286
    #   row 2: log(1 + e^-2) = 0.1269280110429725
    #   mean over the 2 kept rows = 0.2200948492805977 (the seed divided by 3)
    logits = np.array([[1.0, 0.0], [5.0, -5.0], [0.0, 2.0]], dtype=dtype)
    targets = np.array([0, -100, 1])
    loss, cache = backend.cross_entropy_forward(logits, targets)
    check.close(loss, np.array(0.2200948492805977), "cross_entropy.mean", dtype=dtype)
    none, _ = backend.cross_entropy_forward(logits, targets, reduction="none")
    expected = [0.31326168751822286, 0.0, 0.1269280110429725]
    check.close(none, np.array(expected), "cross_entropy.none", dtype=dtype)
    check.close(cache.weight, np.array([0.5, 0.0, 0.5]), "cross_entropy.weight")


def test_backprop17_ce_batch_golden(backend, dtype, check):
    # the seed's compute_batch: predictions 0..5 as (2, 3), targets [0, 1], mean.
    # Both rows are [0, 1, 2] + const, so p = softmax([0, 1, 2])
    #   = [0.09003057317038048, 0.2447284710547977, 0.665240955774822]
    #   -log p = [2.40760596444438, 1.40760596444438, 0.40760596444438]
    #   loss = (2.40760596444438 + 1.40760596444438) / 2 = 1.90760596444438
    logits = np.arange(6, dtype=dtype).reshape(2, 3)
    loss, cache = backend.cross_entropy_forward(logits, np.array([0, 1]))
    check.close(loss, np.array(1.90760596444438), "cross_entropy.mean", dtype=dtype)
    grad = backend.cross_entropy_backward(np.array(1.0, dtype=dtype), cache)
    p = np.array([0.09003057317038048, 0.2447284710547977, 0.665240955774822])
    expected = (np.stack([p, p]) - np.eye(3)[[0, 1]]) / 2
    check.close(grad, expected, "cross_entropy.dlogits", dtype=dtype)
    assert np.all(np.isfinite(grad))


def test_loss01_ce_defaults_are_pytorchs(backend, dtype, rng, check):
    # defaults: ignore_index=-100, label_smoothing=0.0, reduction="mean"
    logits, targets = ce_inputs(rng, 6, 5, dtype, ignored=2)
    default, _ = backend.cross_entropy_forward(logits, targets)
    explicit, _ = backend.cross_entropy_forward(
        logits, targets, ignore_index=-100, label_smoothing=0.0, reduction="mean"
    )
    check.exact(default, explicit, "cross_entropy")
    assert default.shape == () and default.dtype == dtype


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("v", EDGE_SIZES)
def test_ce_forward_backward_match_oracle_over_v(
    backend, dtype, oracle, rng, check, v, reduction
):
    n = 9
    logits, targets = ce_inputs(rng, n, v, dtype, ignored=2)
    dloss = upstream(rng, reduction, (n,), dtype)
    kw = {"reduction": reduction, "label_smoothing": 0.1}
    loss, cache = backend.cross_entropy_forward(logits, targets, **kw)
    grad = backend.cross_entropy_backward(dloss, cache)
    logits64, dloss64 = as_oracle(logits, dloss)
    loss64, cache64 = oracle.cross_entropy_forward(logits64, targets, **kw)
    check.close(loss, loss64, "cross_entropy", dtype=dtype)
    check.close(
        grad,
        oracle.cross_entropy_backward(dloss64, cache64),
        "cross_entropy.dlogits",
        dtype=dtype,
    )


@pytest.mark.parametrize("n", EDGE_SIZES)
def test_ce_forward_backward_match_oracle_over_n(backend, dtype, oracle, rng, check, n):
    v = 11
    logits, targets = ce_inputs(rng, n, v, dtype, ignored=n // 3)
    for eps in (0.0, 0.25):
        loss, cache = backend.cross_entropy_forward(
            logits, targets, label_smoothing=eps
        )
        grad = backend.cross_entropy_backward(np.array(1.0, dtype=dtype), cache)
        loss64, cache64 = oracle.cross_entropy_forward(
            *as_oracle(logits), targets, label_smoothing=eps
        )
        check.close(loss, loss64, "cross_entropy", dtype=dtype)
        check.close(
            grad,
            oracle.cross_entropy_backward(np.array(1.0), cache64),
            "cross_entropy.dlogits",
            dtype=dtype,
        )


@pytest.mark.parametrize("eps", [0.0, 0.3])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bug14_ce_backward_matches_finite_differences(
    backend, rng, check, reduction, eps
):
    skip_unless_float64(backend)
    n, v = 5, 4
    logits, targets = ce_inputs(rng, n, v, np.float64, ignored=2)
    dloss = upstream(rng, reduction, (n,), np.float64)
    kw = {"reduction": reduction, "label_smoothing": eps}
    _, cache = backend.cross_entropy_forward(logits, targets, **kw)
    check.gradcheck(
        lambda z: backend.cross_entropy_forward(z, targets, **kw)[0],
        [logits],
        dloss,
        {0: backend.cross_entropy_backward(dloss, cache)},
        "cross_entropy.dlogits",
    )


@pytest.mark.parametrize("gap", [1.0, 8.0, 9.0, 100.0, 1e4])
def test_bug11_ce_nonnegative_and_finite_at_logit_gap(backend, dtype, check, gap):
    # logits [0, -gap] (the seed's [0, -9] gave -16.1 and [0, -8] gave -0.418):
    #   target 0: -log p0 = log(1 + e^-gap)
    #   target 1: -log p1 = gap + log(1 + e^-gap)
    #   smoothing e: (1 - e) * (-log p_y) + e * (lse - mean z),
    #   where lse - mean z = log(1 + e^-gap) + gap / 2
    logits = np.array([[0.0, -gap], [0.0, -gap]], dtype=dtype)
    soft = math.log1p(math.exp(-gap))
    for eps in (0.0, 0.1):
        loss, cache = backend.cross_entropy_forward(
            logits, np.array([0, 1]), reduction="none", label_smoothing=eps
        )
        assert np.all(np.isfinite(loss)) and np.all(loss >= 0), loss
        uniform = soft + gap / 2
        expected = [
            (1 - eps) * soft + eps * uniform,
            (1 - eps) * (gap + soft) + eps * uniform,
        ]
        check.close(loss, np.array(expected), "cross_entropy.none", dtype=dtype)
        grad = backend.cross_entropy_backward(np.ones(2, dtype=dtype), cache)
        assert np.all(np.isfinite(grad))
        p = np.array([1 / (1 + math.exp(-gap)), math.exp(-gap) / (1 + math.exp(-gap))])
        expected_grad = np.stack([p, p]) - smoothed_target(np.array([0, 1]), 2, eps)
        check.close(grad, expected_grad, "cross_entropy.dlogits", dtype=dtype)


def test_bug11_ce_finite_at_huge_representable_gap(backend, dtype, check):
    # logits +-max/4 give a gap of max/2; the loss of the low class is that gap
    big = float(np.finfo(dtype).max) / 4
    logits = np.array([[big, -big]], dtype=dtype)
    loss, _ = backend.cross_entropy_forward(logits, np.array([1]), reduction="sum")
    check.close(loss, np.array(2 * float(logits[0, 0])), "cross_entropy", dtype=dtype)


@HYPOTHESIS_WITH_FIXTURES
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 6),
    v=st.sampled_from(EDGE_SIZES),
    shift=st.integers(-64, 64),
    eps=st.sampled_from([0.0, 0.1, 1.0]),
)
def test_bug14_ce_invariant_to_logit_shift(
    backend, dtype, check, seed, n, v, shift, eps
):
    """Adding a constant to every logit of a row changes neither loss nor grad."""
    rng = np.random.default_rng(seed)
    # multiples of 1/64 below 8 plus an integer <= 64: exact in float32 and float64
    logits = (np.round(rng.uniform(-8, 8, (n, v)) * 64) / 64).astype(dtype)
    row_shift = rng.integers(-64, 65, size=(n, 1)) + shift
    targets = rng.integers(0, v, size=n)
    kw = {"reduction": "none", "label_smoothing": eps}
    loss, cache = backend.cross_entropy_forward(logits, targets, **kw)
    moved, moved_cache = backend.cross_entropy_forward(
        (logits + row_shift).astype(dtype), targets, **kw
    )
    assert np.all(loss >= 0)
    check.close(moved, loss.astype(np.float64), "cross_entropy.none")
    ones = np.ones(n, dtype=dtype)
    check.close(
        backend.cross_entropy_backward(ones, moved_cache),
        backend.cross_entropy_backward(ones, cache).astype(np.float64),
        "cross_entropy.dlogits",
    )


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bug14_ce_grad_is_softmax_minus_smoothed_target(
    backend, dtype, rng, check, reduction, eps
):
    n, v = 6, 7
    logits, targets = ce_inputs(rng, n, v, dtype)
    dloss = upstream(rng, reduction, (n,), dtype)
    _, cache = backend.cross_entropy_forward(
        logits, targets, reduction=reduction, label_smoothing=eps
    )
    grad = backend.cross_entropy_backward(dloss, cache)
    p = np.exp(ref_log_softmax(logits))
    if reduction == "none":
        scale = dloss.astype(np.float64)[:, None]  # (N, 1)
    else:
        scale = float(dloss) / (n if reduction == "mean" else 1)
    expected = (p - smoothed_target(targets, v, eps)) * scale
    check.close(grad, expected, "cross_entropy.dlogits", dtype=dtype)


def test_bug14_ce_every_reduction(backend, dtype, rng, check):
    n, v = 8, 5
    logits, targets = ce_inputs(rng, n, v, dtype)
    none, _ = backend.cross_entropy_forward(logits, targets, reduction="none")
    total, _ = backend.cross_entropy_forward(logits, targets, reduction="sum")
    mean, _ = backend.cross_entropy_forward(logits, targets, reduction="mean")
    # "none" is the per-row loss, not the sum (the seed returned the sum)
    assert none.shape == (n,) and total.shape == () and mean.shape == ()
    assert none.dtype == total.dtype == mean.dtype == dtype
    logp = ref_log_softmax(logits)
    check.close(none, -logp[np.arange(n), targets], "cross_entropy.none")
    check.close(total, none.astype(np.float64).sum(), "cross_entropy.sum")
    check.close(mean, none.astype(np.float64).sum() / n, "cross_entropy.mean")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bug14_ce_ignored_rows_contribute_nothing(
    backend, dtype, rng, check, reduction
):
    n, v = 7, 6
    logits, targets = ce_inputs(rng, n, v, dtype)
    targets[[1, 4]] = -100
    other = logits.copy()
    other[[1, 4]] = normal(rng, (2, v), dtype, scale=50.0)
    dloss = upstream(rng, reduction, (n,), dtype)
    kw = {"reduction": reduction, "label_smoothing": 0.2}
    loss_a, cache_a = backend.cross_entropy_forward(logits, targets, **kw)
    loss_b, cache_b = backend.cross_entropy_forward(other, targets, **kw)
    check.exact(loss_a, loss_b, "cross_entropy")
    grad_a = backend.cross_entropy_backward(dloss, cache_a)
    grad_b = backend.cross_entropy_backward(dloss, cache_b)
    kept = [0, 2, 3, 5, 6]
    check.exact(grad_a[kept], grad_b[kept], "cross_entropy.dlogits")
    # zero whatever the logits (the sign of a zero is not part of the spec)
    assert np.all(grad_a[[1, 4]] == 0) and np.all(grad_b[[1, 4]] == 0)
    if reduction == "none":
        assert np.all(loss_a[[1, 4]] == 0)


def test_bug14_ce_mean_divides_by_kept_count(backend, dtype, rng, check):
    n, v, ignored = 9, 4, 4
    logits, targets = ce_inputs(rng, n, v, dtype, ignored=ignored)
    mean, cache_mean = backend.cross_entropy_forward(logits, targets)
    total, cache_sum = backend.cross_entropy_forward(logits, targets, reduction="sum")
    kept = n - ignored
    check.close(mean, np.float64(total) / kept, "cross_entropy.mean")
    one = np.array(1.0, dtype=dtype)
    grad_mean = backend.cross_entropy_backward(one, cache_mean)
    grad_sum = backend.cross_entropy_backward(one, cache_sum)
    # backward uses the same count as forward (the seed divided by N)
    check.close(grad_mean, grad_sum.astype(np.float64) / kept, "cross_entropy.dlogits")
    check.close(
        cache_mean.weight,
        np.r_[np.zeros(ignored), np.full(kept, 1 / kept)],
        "cross_entropy.weight",
    )


def test_bug14_ce_mean_with_ignored_rows_matches_finite_differences(
    backend, rng, check
):
    skip_unless_float64(backend)
    logits, targets = ce_inputs(rng, 6, 3, np.float64, ignored=3)
    _, cache = backend.cross_entropy_forward(logits, targets)
    dloss = np.array(1.0)
    check.gradcheck(
        lambda z: backend.cross_entropy_forward(z, targets)[0],
        [logits],
        dloss,
        {0: backend.cross_entropy_backward(dloss, cache)},
        "cross_entropy.dlogits",
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ce_all_rows_ignored(backend, dtype, rng, check, reduction):
    # PyTorch: mean is 0/0 = NaN, sum is 0, and the gradient is all zeros
    logits, targets = ce_inputs(rng, 4, 3, dtype, ignored=4)
    loss, cache = backend.cross_entropy_forward(logits, targets, reduction=reduction)
    expected = {"mean": np.array(np.nan), "sum": np.array(0.0), "none": np.zeros(4)}
    check.close(loss, expected[reduction], f"cross_entropy.{reduction}", dtype=dtype)
    grad = backend.cross_entropy_backward(upstream(rng, reduction, (4,), dtype), cache)
    assert grad.shape == (4, 3) and grad.dtype == dtype
    assert np.all(grad == 0)


def test_ce_ignore_index_inside_class_range(backend, dtype, check):
    # ignore_index = 1 drops the rows whose target is 1; -100 is then a bad id
    logits = np.array(SEED_LOGITS, dtype=dtype)
    loss, _ = backend.cross_entropy_forward(
        logits, np.array([0, 1]), ignore_index=1, reduction="none"
    )
    check.close(loss, np.array([SEED_ROW_LOSS[0], 0.0]), "cross_entropy.none")
    with pytest.raises(IdRangeError):
        backend.cross_entropy_forward(logits, np.array([0, -100]), ignore_index=1)


def test_ce_single_class_is_zero(backend, dtype, check):
    # V = 1: p = 1, loss 0 for every reduction and smoothing, gradient 0
    logits = np.array([[3.0], [-2.0]], dtype=dtype)
    loss, cache = backend.cross_entropy_forward(
        logits, np.array([0, 0]), label_smoothing=0.4, reduction="none"
    )
    check.close(loss, np.zeros(2), "cross_entropy.none", dtype=dtype)
    grad = backend.cross_entropy_backward(np.ones(2, dtype=dtype), cache)
    check.close(grad, np.zeros((2, 1)), "cross_entropy.dlogits", dtype=dtype)


def test_ce_cache_fields(backend, dtype, rng, check):
    logits, targets = ce_inputs(rng, 5, 4, dtype, ignored=1)
    for reduction, kept_weight in [("mean", 0.25), ("sum", 1.0), ("none", 1.0)]:
        _, cache = backend.cross_entropy_forward(
            logits, targets, reduction=reduction, label_smoothing=0.2
        )
        p = np.exp(ref_log_softmax(logits))
        check.close(cache.probs, p, "cross_entropy.probs", dtype=dtype)
        check.close(
            cache.weight,
            np.r_[0.0, np.full(4, kept_weight)],
            "cross_entropy.weight",
            dtype=dtype,
        )
        check.exact(cache.targets.astype(np.int64), targets, "cross_entropy.targets")
        assert cache.label_smoothing == pytest.approx(0.2)
        assert cache.reduction == reduction


def _ce_call(logits=None, targets=None, **kw):
    def call(backend, dt):
        lg = np.array(SEED_LOGITS, dtype=dt) if logits is None else logits(dt)
        tg = np.array(SEED_TARGETS) if targets is None else targets(dt)
        return backend.cross_entropy_forward(lg, tg, **kw)

    return call


CE_BAD: list[tuple[str, Callable[..., Any], type[Exception]]] = [
    ("logits_int", _ce_call(logits=lambda dt: np.ones((2, 3), np.int64)), DTypeError),
    ("logits_f16", _ce_call(logits=lambda dt: np.ones((2, 3), np.float16)), DTypeError),
    ("logits_list", _ce_call(logits=lambda dt: SEED_LOGITS), DTypeError),
    ("targets_float", _ce_call(targets=lambda dt: np.array([0.0, 1.0])), DTypeError),
    (
        "targets_uint8",
        _ce_call(targets=lambda dt: np.array([0, 1], np.uint8)),
        DTypeError,
    ),
    ("logits_rank1", _ce_call(logits=lambda dt: np.ones(3, dt)), ShapeError),
    ("logits_rank3", _ce_call(logits=lambda dt: np.ones((1, 2, 3), dt)), ShapeError),
    ("targets_long", _ce_call(targets=lambda dt: np.array([0, 1, 2])), ShapeError),
    ("targets_rank2", _ce_call(targets=lambda dt: np.array([[0, 1]])), ShapeError),
    (
        "no_rows",
        _ce_call(
            logits=lambda dt: np.ones((0, 3), dt),
            targets=lambda dt: np.zeros(0, np.int64),
        ),
        EmptyInputError,
    ),
    ("no_classes", _ce_call(logits=lambda dt: np.ones((2, 0), dt)), EmptyInputError),
    ("target_eq_v", _ce_call(targets=lambda dt: np.array([0, 3])), IdRangeError),
    ("target_neg", _ce_call(targets=lambda dt: np.array([-1, 0])), IdRangeError),
    (
        "target_other_ignore",
        _ce_call(targets=lambda dt: np.array([-100, 0]), ignore_index=-1),
        IdRangeError,
    ),
    (
        "logits_nan",
        _ce_call(logits=lambda dt: np.array([[0, np.nan, 1], [0, 1, 2]], dt)),
        NonFiniteError,
    ),
    (
        "logits_inf",
        _ce_call(logits=lambda dt: np.array([[0, np.inf, 1], [0, 1, 2]], dt)),
        NonFiniteError,
    ),
    (
        "logits_neginf",
        _ce_call(logits=lambda dt: np.array([[0, -np.inf, 1], [0, 1, 2]], dt)),
        NonFiniteError,
    ),
    ("smoothing_neg", _ce_call(label_smoothing=-0.1), ConfigError),
    ("smoothing_gt1", _ce_call(label_smoothing=1.1), ConfigError),
    ("smoothing_nan", _ce_call(label_smoothing=float("nan")), ConfigError),
    ("smoothing_str", _ce_call(label_smoothing="0.1"), ConfigError),
    ("reduction_avg", _ce_call(reduction="avg"), ConfigError),
    ("reduction_none_obj", _ce_call(reduction=None), ConfigError),
    ("ignore_float", _ce_call(ignore_index=1.5), ConfigError),
    ("ignore_bool", _ce_call(ignore_index=True), ConfigError),
]


@pytest.mark.parametrize(("bad", "call", "error"), CE_BAD, ids=[b[0] for b in CE_BAD])
def test_loss13_ce_bad_inputs_raise_typed_errors(backend, dtype, bad, call, error):
    with pytest.raises(error):
        call(backend, dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ce_backward_bad_dloss(backend, dtype, reduction):
    logits = np.array(SEED_LOGITS, dtype=dtype)
    _, cache = backend.cross_entropy_forward(
        logits, np.array(SEED_TARGETS), reduction=reduction
    )
    good_shape = (2,) if reduction == "none" else ()
    wrong_shape = () if reduction == "none" else (2,)
    other = np.float32 if dtype == np.float64 else np.float64
    with pytest.raises(ShapeError):
        backend.cross_entropy_backward(np.ones(wrong_shape, dtype=dtype), cache)
    with pytest.raises(ShapeError):
        backend.cross_entropy_backward(np.ones((1, 2), dtype=dtype), cache)
    with pytest.raises(DTypeError):
        backend.cross_entropy_backward(np.ones(good_shape, dtype=other), cache)
    with pytest.raises(DTypeError):
        backend.cross_entropy_backward(np.ones(good_shape, dtype=np.int64), cache)
    with pytest.raises(NonFiniteError):
        backend.cross_entropy_backward(np.full(good_shape, np.nan, dtype=dtype), cache)


def test_ce_deterministic_and_pure(backend, dtype, rng, check):
    logits, targets = ce_inputs(rng, 33, 17, dtype, ignored=3)
    dloss = normal(rng, (33,), dtype)
    saved = (logits.copy(), targets.copy(), dloss.copy())
    kw = {"reduction": "none", "label_smoothing": 0.1}
    loss1, cache1 = backend.cross_entropy_forward(logits, targets, **kw)
    loss2, cache2 = backend.cross_entropy_forward(logits, targets, **kw)
    check.exact(loss1, loss2, "cross_entropy")
    grad1 = backend.cross_entropy_backward(dloss, cache1)
    check.exact(
        grad1, backend.cross_entropy_backward(dloss, cache2), "cross_entropy.dlogits"
    )
    check.exact(
        backend.cross_entropy_backward(dloss, cache1),
        grad1,
        "cross_entropy.dlogits again",
    )
    for name, now, before in zip(
        ("logits", "targets", "dloss"), (logits, targets, dloss), saved, strict=True
    ):
        check.exact(now, before, f"{name} unchanged")


# =================================================== regression losses ====
def huber_np(d: np.ndarray, delta: float = 1.0) -> np.ndarray:
    a = np.abs(d)
    return np.where(a < delta, 0.5 * d * d, delta * (a - 0.5 * delta))


KINDS = ("mse", "l1", "huber")


def regression(
    backend: Any, kind: str
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    return getattr(backend, f"{kind}_forward"), getattr(backend, f"{kind}_backward")


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
    skip_unless_float64(backend)
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
    skip_unless_float64(backend)
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


def _bad_pair(pred: Callable[[Any], Any], target: Callable[[Any], Any] | None = None):
    return lambda dt: (pred(dt), target(dt) if target else np.zeros((2, 3), dt))


REGRESSION_BAD = [
    (
        "pred_int",
        _bad_pair(
            lambda dt: np.zeros((2, 3), np.int64), lambda dt: np.zeros((2, 3), np.int64)
        ),
        DTypeError,
    ),
    (
        "mixed_dtypes",
        _bad_pair(
            lambda dt: np.zeros((2, 3), np.float32),
            lambda dt: np.zeros((2, 3), np.float64),
        ),
        DTypeError,
    ),
    ("pred_list", _bad_pair(lambda dt: [[0.0] * 3] * 2), DTypeError),
    ("shape_mismatch", _bad_pair(lambda dt: np.zeros((3, 2), dt)), ShapeError),
    ("no_broadcast", _bad_pair(lambda dt: np.zeros((1, 3), dt)), ShapeError),
    (
        "empty",
        _bad_pair(lambda dt: np.zeros((0, 3), dt), lambda dt: np.zeros((0, 3), dt)),
        EmptyInputError,
    ),
    ("pred_nan", _bad_pair(lambda dt: np.full((2, 3), np.nan, dt)), NonFiniteError),
    (
        "target_inf",
        _bad_pair(
            lambda dt: np.zeros((2, 3), dt), lambda dt: np.full((2, 3), np.inf, dt)
        ),
        NonFiniteError,
    ),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("bad", "make", "error"), REGRESSION_BAD, ids=[b[0] for b in REGRESSION_BAD]
)
def test_loss13_regression_bad_inputs_raise_typed_errors(
    backend, dtype, kind, bad, make, error
):
    forward, _ = regression(backend, kind)
    pred, target = make(dtype)
    with pytest.raises(error):
        forward(pred, target)


@pytest.mark.parametrize("kind", KINDS)
def test_regression_bad_hyperparameters(backend, dtype, kind):
    forward, _ = regression(backend, kind)
    x = np.zeros((2, 3), dtype)
    for reduction in ("avg", None, "MEAN"):
        with pytest.raises(ConfigError):
            forward(x, x, reduction=reduction)
    if kind == "huber":
        for delta in (0.0, -1.0, float("nan"), float("inf"), "1"):
            with pytest.raises(ConfigError):
                backend.huber_forward(x, x, delta=delta)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_regression_backward_bad_dloss(backend, dtype, kind, reduction):
    forward, backward = regression(backend, kind)
    x = np.ones((2, 3), dtype)
    _, cache = forward(x, x * 2, reduction=reduction)
    good = (2, 3) if reduction == "none" else ()
    wrong = () if reduction == "none" else (2, 3)
    other = np.float32 if dtype == np.float64 else np.float64
    with pytest.raises(ShapeError):
        backward(np.ones(wrong, dtype), cache)
    with pytest.raises(DTypeError):
        backward(np.ones(good, other), cache)
    with pytest.raises(NonFiniteError):
        backward(np.full(good, np.inf, dtype), cache)


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
