"""Conformance of cross-entropy, forward and backward.

Spec: ``cllm_spec.losses``. ``cross_entropy_forward`` and
``cross_entropy_backward``: goldens, the float64 reference, finite differences,
label smoothing (e / V), ignore_index and the mean over the kept rows, every
reduction, logit gaps and shifts, the cache, and repeated calls.
``test_lossNN_*`` (``test_backprop17_*``) is test NN (17) of the seed project's
``tests/unit/test_loss.c`` (``test_backprop.c``) as an exact numeric check;
``test_bug11_*`` / ``test_bug14_*`` are regressions for its bugs 11 (broken
exp/log: negative cross-entropy) and 14 (loss API inconsistencies).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cllm_spec.errors import IdRangeError
from conformance.gradcheck import needs_float64
from conformance.losses_helpers import (
    REDUCTIONS,
    SEED_LOGITS,
    SEED_MEAN_LOSS,
    SEED_PROBS,
    SEED_ROW_LOSS,
    SEED_TARGETS,
    upstream,
)
from conformance.strategies import EDGE_SIZES, FIXTURE_OK, as_oracle, normal


def ce_inputs(
    rng: np.random.Generator, n: int, v: int, dtype: Any, *, ignored: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Logits of scale 3 and targets with the first ``ignored`` rows set to -100."""
    logits = normal(rng, (n, v), dtype, scale=3.0)
    targets = rng.integers(0, v, size=n).astype(np.int64)
    targets[:ignored] = -100
    return logits, targets


def ce_matches_oracle(
    backend: Any,
    oracle: Any,
    check: Any,
    logits: np.ndarray,
    targets: np.ndarray,
    dloss: np.ndarray,
    **kw: Any,
) -> None:
    """The loss of ``cross_entropy_forward(logits, targets, **kw)`` and the
    logits' gradient for ``dloss`` match the float64 oracle's."""
    loss, cache = backend.cross_entropy_forward(logits, targets, **kw)
    grad = backend.cross_entropy_backward(dloss, cache)
    logits64, dloss64 = as_oracle(logits, dloss)
    loss64, cache64 = oracle.cross_entropy_forward(logits64, targets, **kw)
    check.close(loss, loss64, "cross_entropy", dtype=logits.dtype)
    check.close(
        grad,
        oracle.cross_entropy_backward(dloss64, cache64),
        "cross_entropy.dlogits",
        dtype=logits.dtype,
    )


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
    ce_matches_oracle(
        backend, oracle, check, logits, targets, dloss,
        reduction=reduction, label_smoothing=0.1,
    )  # fmt: skip


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


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ce_over_many_rows_matches_oracle(
    backend, dtype, oracle, rng, check, reduction
):
    # enough rows for a backend to cut them into groups and spread those over
    # threads (517 rows of 67 classes; the C backend's tasks take 122 rows,
    # the last 29): every row is computed, and lands in its own place
    n, v = 517, 67
    logits, targets = ce_inputs(rng, n, v, dtype, ignored=40)
    targets[-1] = -100  # an ignored row in the last group too
    dloss = upstream(rng, reduction, (n,), dtype)
    ce_matches_oracle(
        backend, oracle, check, logits, targets, dloss,
        reduction=reduction, label_smoothing=0.1,
    )  # fmt: skip


@pytest.mark.parametrize("eps", [0.0, 0.3])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bug14_ce_backward_matches_finite_differences(
    backend, rng, check, reduction, eps
):
    needs_float64(backend)
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


@FIXTURE_OK
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
    needs_float64(backend)
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
