"""Conformance of the gradients component (spec: ``cllm_spec.gradients``).

Test names carry the origin of each check: ``test_lossNN_*`` is the NN-th test of
the seed project's ``tests/unit/test_loss.c``, ``test_backpropNN_*`` of its
``test_backprop.c`` and ``test_optimNN_*`` of its ``test_optimizer.c``, each
turned into an exact numeric check.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cllm_spec.errors import ConfigError, DTypeError, EmptyInputError, ShapeError
from cllm_spec.tolerances import tolerance
from conformance.strategies import EDGE_SIZES, as_oracle, normal

INF, NAN = math.inf, math.nan
SIZES = (*EDGE_SIZES, 4096)
NORM_TYPES = (2.0, INF)


def arr(values: list[float], dtype: Any) -> np.ndarray:
    return np.array(values, dtype=dtype)


def close_float(check: Any, actual: Any, expected: float, output: str, dtype: Any):
    """A Python-float result compared at the tolerance of the input dtype."""
    assert isinstance(actual, float), f"{output}: expected float, got {type(actual)}"
    check.close(
        np.float64(actual),
        np.float64(expected),
        output,
        tol=tolerance("gradients", output, dtype),
    )


def norm_after_clip(total: float, max_norm: float) -> float:
    """||g * coef|| with PyTorch's coef = min(max_norm / (total + 1e-6), 1)."""
    return total * min(max_norm / (total + 1e-6), 1.0)


# ================================================================ norm ====
def test_optim09_global_norm_golden(backend, dtype, check):
    # ||[3, 4, 0]||_2 = 5; ||[1, 2, 3, 4]||_2 = sqrt(30); max-abs norms 4 and 4
    g = arr([3.0, 4.0, 0.0], dtype)
    close_float(check, backend.grad_global_norm(g), 5.0, "norm", dtype)
    h = arr([1.0, -2.0, 3.0, -4.0], dtype)
    close_float(check, backend.grad_global_norm(h), math.sqrt(30), "norm", dtype)
    close_float(check, backend.grad_global_norm(h, INF), 4.0, "norm", dtype)
    close_float(check, backend.grad_global_norm(g, norm_type=INF), 4.0, "norm", dtype)
    close_float(check, backend.grad_global_norm(g * 0), 0.0, "norm", dtype)


@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("p", SIZES)
def test_global_norm_matches_oracle(backend, dtype, oracle, rng, check, p, norm_type):
    g = normal(rng, (p,), dtype, scale=3.0)
    expected = oracle.grad_global_norm(*as_oracle(g), norm_type)
    close_float(check, backend.grad_global_norm(g, norm_type), expected, "norm", dtype)


@pytest.mark.parametrize(
    ("value", "count"),
    [
        (1e30, 4),  # float32 squares overflow (1e60 > 3.4e38)
        (1e-30, 4),  # float32 squares flush to 0 (1e-60 < 1.4e-45)
        (3e38, 9),  # the norm 9e38 exceeds float32 but not the Python float result
        (1e-45, 4),  # float32 subnormals
    ],
)
def test_global_norm_float32_no_overflow_or_underflow(backend, check, value, count):
    # the norm of `count` equal values v is sqrt(count) * v
    if np.dtype(np.float32) not in {np.dtype(d) for d in backend.dtypes}:
        pytest.skip(f"{backend.name} has no float32")
    g = np.full(count, value, dtype=np.float32)
    expected = math.sqrt(count) * float(g[0])
    close_float(check, backend.grad_global_norm(g), expected, "norm", np.float32)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1e200, 2e200), (1e-200, 2e-200), (1e300, 2e300), (5e-324, 1e-323)],
)
def test_global_norm_float64_no_overflow_or_underflow(backend, check, value, expected):
    if np.dtype(np.float64) not in {np.dtype(d) for d in backend.dtypes}:
        pytest.skip(f"{backend.name} has no float64")
    g = np.full(4, value)  # sum of squares overflows or flushes to 0 when naive
    close_float(check, backend.grad_global_norm(g), expected, "norm", np.float64)


def test_global_norm_nonfinite(backend, dtype):
    # NaN anywhere gives NaN; otherwise inf gives inf (both norm types)
    for norm_type in NORM_TYPES:
        assert math.isnan(
            backend.grad_global_norm(arr([1, NAN, INF], dtype), norm_type)
        )
        assert backend.grad_global_norm(arr([1, -INF, 2], dtype), norm_type) == INF


@pytest.mark.parametrize("norm_type", [1.0, 3, 0.0, -INF, NAN, "2", "inf", True, None])
def test_global_norm_bad_norm_type(backend, dtype, norm_type):
    with pytest.raises(ConfigError):
        backend.grad_global_norm(arr([1.0, 2.0], dtype), norm_type)


def test_global_norm_accepts_int_two(backend, dtype, check):
    close_float(
        check, backend.grad_global_norm(arr([3, 4], dtype), 2), 5.0, "norm", dtype
    )


FLAT_BAD = [
    ("int", lambda dt: np.ones(3, dtype=np.int64), DTypeError),
    ("float16", lambda dt: np.ones(3, dtype=np.float16), DTypeError),
    ("list", lambda dt: [1.0, 2.0], DTypeError),
    ("rank0", lambda dt: np.array(1.0, dtype=dt), ShapeError),
    ("rank2", lambda dt: np.ones((2, 3), dtype=dt), ShapeError),
    ("empty", lambda dt: np.ones(0, dtype=dt), EmptyInputError),
]
FLAT_IDS = [b[0] for b in FLAT_BAD]
UNARY_CALLS = {
    "grad_global_norm": lambda b, g: b.grad_global_norm(g),
    "clip_grad_norm": lambda b, g: b.clip_grad_norm(g, 1.0),
    "clip_grad_value": lambda b, g: b.clip_grad_value(g, 1.0),
    "grad_stats": lambda b, g: b.grad_stats(g),
    "grad_scale": lambda b, g: b.grad_scale(g, 0.5),
    "grad_accumulate_g": lambda b, g: b.grad_accumulate(g, g),
    "grad_tree_reduce": lambda b, g: b.grad_tree_reduce([g, g]),
}


@pytest.mark.parametrize("fn", list(UNARY_CALLS))
@pytest.mark.parametrize(("bad", "make", "error"), FLAT_BAD, ids=FLAT_IDS)
def test_bad_buffers_raise_typed_errors(backend, dtype, fn, bad, make, error):
    with pytest.raises(error):
        UNARY_CALLS[fn](backend, make(dtype))


# ============================================================ clipping ====
def test_loss15_clip_by_norm_six_ones(backend, dtype, check):
    # ||1_6|| = sqrt(6) = 2.449 is returned; the clipped norm is
    # sqrt(6) * 2 / (sqrt(6) + 1e-6) (PyTorch's eps makes it a hair below 2)
    clipped, total = backend.clip_grad_norm(np.ones(6, dtype=dtype), 2.0)
    close_float(check, total, math.sqrt(6), "norm", dtype)
    coef = 2.0 / (math.sqrt(6) + 1e-6)
    check.close(clipped, np.full(6, coef), "clipped", dtype=dtype)
    check.close(
        np.sqrt(np.sum(clipped.astype(np.float64) ** 2)),
        np.float64(norm_after_clip(math.sqrt(6), 2.0)),
        "norm",
        tol=tolerance("gradients", "norm", dtype),
    )


def test_backprop09_clip_by_norm_one_two_three(backend, dtype, check):
    # ||[1, 2, 3]|| = sqrt(14) = 3.742 returned; values scaled by 2 / (sqrt(14) + 1e-6)
    clipped, total = backend.clip_grad_norm(arr([1, 2, 3], dtype), 2.0)
    close_float(check, total, math.sqrt(14), "norm", dtype)
    coef = 2.0 / (math.sqrt(14) + 1e-6)
    check.close(clipped, coef * np.array([1.0, 2.0, 3.0]), "clipped", dtype=dtype)


def test_optim08_clip_by_norm_three_four_zero(backend, dtype, check):
    # ||[3, 4, 0]|| = 5 returned; values 3 * 2.5 / 5 = 1.5 and 4 * 2.5 / 5 = 2.0
    # (up to the 1e-6 of PyTorch's denominator)
    clipped, total = backend.clip_grad_norm(arr([3, 4, 0], dtype), 2.5)
    close_float(check, total, 5.0, "norm", dtype)
    coef = 2.5 / (5.0 + 1e-6)
    check.close(clipped, coef * np.array([3.0, 4.0, 0.0]), "clipped", dtype=dtype)


def test_clip_by_norm_eps_is_pytorchs(backend, check):
    # float64: total 1, max_norm 1 -> coef 1 / (1 + 1e-6), visibly below 1
    if np.dtype(np.float64) not in {np.dtype(d) for d in backend.dtypes}:
        pytest.skip(f"{backend.name} has no float64")
    clipped, _ = backend.clip_grad_norm(np.array([0.6, 0.8]), 1.0)
    check.close(clipped, np.array([0.6, 0.8]) / (1 + 1e-6), "clipped")
    assert clipped[1] < 0.8


def test_clip_by_norm_inf_norm_type(backend, dtype, check):
    # max-abs norm of [3, -4, 1] is 4; max_norm 2 scales by 2 / (4 + 1e-6)
    clipped, total = backend.clip_grad_norm(arr([3, -4, 1], dtype), 2.0, INF)
    close_float(check, total, 4.0, "norm", dtype)
    coef = 2.0 / (4.0 + 1e-6)
    check.close(clipped, coef * np.array([3.0, -4.0, 1.0]), "clipped", dtype=dtype)


def test_clip_by_norm_below_threshold_is_bit_identical(backend, dtype, rng, check):
    # coef clamps to exactly 1, and g * 1 == g bit for bit
    g = normal(rng, (33,), dtype)
    total = float(np.sqrt(np.sum(g.astype(np.float64) ** 2)))
    clipped, returned = backend.clip_grad_norm(g, total * 2)
    check.exact(clipped, g, "clipped")
    close_float(check, returned, total, "norm", dtype)
    assert clipped is not g


@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("p", SIZES)
def test_clip_by_norm_matches_oracle(backend, dtype, oracle, rng, check, p, norm_type):
    g = normal(rng, (p,), dtype, scale=2.0)
    max_norm = 0.5 * math.sqrt(p)  # below the expected norm ~2 sqrt(p): clips
    clipped, total = backend.clip_grad_norm(g, max_norm, norm_type)
    clipped64, total64 = oracle.clip_grad_norm(*as_oracle(g), max_norm, norm_type)
    close_float(check, total, total64, "norm", dtype)
    check.close(clipped, clipped64, "clipped", dtype=dtype)
    if norm_type == 2.0:
        new_norm = np.sqrt(np.sum(clipped.astype(np.float64) ** 2))
        check.close(
            new_norm,
            np.float64(norm_after_clip(total64, max_norm)),
            "norm",
            tol=tolerance("gradients", "norm", dtype),
        )


def test_clip_by_norm_nonfinite_follows_pytorch(backend, dtype, check):
    # error_if_nonfinite=False: NaN norm -> coef NaN -> everything NaN;
    # inf norm -> coef 0 -> finite elements 0, infinite ones 0 * inf = NaN
    clipped, total = backend.clip_grad_norm(arr([1, NAN, 2], dtype), 1.0)
    assert math.isnan(total)
    assert clipped.dtype == dtype and np.all(np.isnan(clipped))
    clipped, total = backend.clip_grad_norm(arr([1, -INF, 2], dtype), 1.0)
    assert total == INF
    check.close(clipped, np.array([0.0, NAN, 0.0]), "clipped", dtype=dtype)


@pytest.mark.parametrize("max_norm", [0.0, -1.0, NAN, INF, "1", None, True])
def test_clip_by_norm_bad_max_norm(backend, dtype, max_norm):
    with pytest.raises(ConfigError):
        backend.clip_grad_norm(arr([1.0, 2.0], dtype), max_norm)


@pytest.mark.parametrize("norm_type", [1.0, 3.0, "inf"])
def test_clip_by_norm_bad_norm_type(backend, dtype, norm_type):
    with pytest.raises(ConfigError):
        backend.clip_grad_norm(arr([1.0, 2.0], dtype), 1.0, norm_type=norm_type)


def test_loss14_clip_by_value(backend, dtype, check):
    # clip(2) on {5, -3, 0.5} -> {2, -2, 0.5}
    out = backend.clip_grad_value(arr([5, -3, 0.5], dtype), 2.0)
    check.exact(out, arr([2, -2, 0.5], dtype), "clip_value")


def test_backprop08_clip_by_value(backend, dtype, check):
    # clip(2) on {5, -3, 0.5, -10, 2} -> {2, -2, 0.5, -2, 2}
    out = backend.clip_grad_value(arr([5, -3, 0.5, -10, 2], dtype), 2.0)
    check.exact(out, arr([2, -2, 0.5, -2, 2], dtype), "clip_value")


def test_optim07_clip_by_value(backend, dtype, check):
    # clip(1) on {-2, -0.5, 0, 0.5, 2} -> {-1, -0.5, 0, 0.5, 1}
    out = backend.clip_grad_value(arr([-2, -0.5, 0, 0.5, 2], dtype), 1)
    check.exact(out, arr([-1, -0.5, 0, 0.5, 1], dtype), "clip_value")


def test_clip_by_value_nonfinite(backend, dtype, check):
    # NaN stays NaN, +-inf become +-c (torch.clamp)
    out = backend.clip_grad_value(arr([NAN, INF, -INF, 0.25], dtype), 0.5)
    check.close(out, np.array([NAN, 0.5, -0.5, 0.25]), "clip_value", dtype=dtype)


@pytest.mark.parametrize("p", SIZES)
def test_clip_by_value_matches_oracle(backend, dtype, oracle, rng, check, p):
    g = normal(rng, (p,), dtype, scale=2.0)
    out = backend.clip_grad_value(g, 1.5)
    check.close(
        out, oracle.clip_grad_value(*as_oracle(g), 1.5), "clip_value", dtype=dtype
    )
    assert np.all(np.abs(out) <= dtype.type(1.5))


@pytest.mark.parametrize("clip_value", [0.0, -2.0, NAN, INF, "1", None])
def test_clip_by_value_bad_clip_value(backend, dtype, clip_value):
    with pytest.raises(ConfigError):
        backend.clip_grad_value(arr([1.0, 2.0], dtype), clip_value)


# =========================================================== statistics ====
def test_backprop06_stats_golden(backend, dtype, check):
    # [1, 2, 3, 4]: norm sqrt(30) = 5.477, mean 2.5, min 1, max 4, no non-finite
    stats = backend.grad_stats(arr([1, 2, 3, 4], dtype))
    close_float(check, stats.norm, math.sqrt(30), "norm", dtype)
    close_float(check, stats.mean, 2.5, "mean", dtype)
    assert (stats.min, stats.max) == (1.0, 4.0)
    assert isinstance(stats.min, float) and isinstance(stats.max, float)
    assert stats.nonfinite == 0 and isinstance(stats.nonfinite, int)


def test_backprop07_stats_count_nonfinite(backend, dtype):
    # NaN, inf and -inf are counted; every statistic is over all elements, so NaN
    # makes norm, min, max and mean NaN
    stats = backend.grad_stats(arr([1, NAN, INF, -INF, 2, NAN], dtype))
    assert stats.nonfinite == 4
    assert all(math.isnan(v) for v in (stats.norm, stats.min, stats.max, stats.mean))
    stats = backend.grad_stats(arr([1, INF, -3], dtype))
    assert stats.nonfinite == 1
    assert (stats.norm, stats.min, stats.max, stats.mean) == (INF, -3.0, INF, INF)


@pytest.mark.parametrize("p", SIZES)
def test_stats_match_oracle(backend, dtype, oracle, rng, check, p):
    g = normal(rng, (p,), dtype) + dtype.type(0.25)
    stats = backend.grad_stats(g)
    ref = oracle.grad_stats(*as_oracle(g))
    for field in ("norm", "mean"):
        close_float(check, getattr(stats, field), getattr(ref, field), field, dtype)
    # min and max are elements of g: exact
    assert (stats.min, stats.max) == (float(g.min()), float(g.max()))
    assert stats.nonfinite == 0
    close_float(check, stats.norm, backend.grad_global_norm(g), "norm", dtype)


def test_stats_mean_accumulates_precisely(backend, dtype, check):
    # 2^20 copies of 0.1 (rounded to dtype): the mean is that rounded value
    g = np.full(2**20, 0.1, dtype=dtype)
    stats = backend.grad_stats(g)
    close_float(check, stats.mean, float(dtype.type(0.1)), "mean", dtype)
    close_float(check, stats.norm, float(dtype.type(0.1)) * 2**10, "norm", dtype)


# =========================================================== arithmetic ====
def test_backprop04_accumulate_golden(backend, dtype, check):
    # 1 + 2 -> 3 element-wise, as a new array
    acc, g = np.ones(100, dtype=dtype), np.full(100, 2.0, dtype=dtype)
    out = backend.grad_accumulate(acc, g)
    check.exact(out, np.full(100, 3.0, dtype=dtype), "accumulate")
    assert out is not acc and not np.shares_memory(out, acc)
    check.exact(acc, np.ones(100, dtype=dtype), "acc unchanged")


def test_backprop13_accumulate_twice(backend, dtype, check):
    # zeros + ones + ones -> 2
    acc = np.zeros(100, dtype=dtype)
    for _ in range(2):
        acc = backend.grad_accumulate(acc, np.ones(100, dtype=dtype))
    check.exact(acc, np.full(100, 2.0, dtype=dtype), "accumulate")


@pytest.mark.parametrize("p", SIZES)
def test_accumulate_and_scale_match_oracle(backend, dtype, oracle, rng, check, p):
    acc, g = normal(rng, (p,), dtype), normal(rng, (p,), dtype)
    acc64, g64 = as_oracle(acc, g)
    check.close(
        backend.grad_accumulate(acc, g),
        oracle.grad_accumulate(acc64, g64),
        "accumulate",
        dtype=dtype,
    )
    check.close(
        backend.grad_scale(g, -0.37),
        oracle.grad_scale(g64, -0.37),
        "scale",
        dtype=dtype,
    )


def test_bug17_accumulate_size_mismatch_is_an_error(backend, dtype):
    # the seed's gradient_buffer_add silently did nothing on a size mismatch
    other = np.float32 if dtype == np.float64 else np.float64
    with pytest.raises(ShapeError):
        backend.grad_accumulate(np.ones(3, dtype), np.ones(4, dtype))
    with pytest.raises(DTypeError):
        backend.grad_accumulate(np.ones(3, dtype), np.ones(3, other))
    with pytest.raises(DTypeError):
        backend.grad_accumulate(np.ones(3, dtype), np.ones(3, np.int32))


def test_accumulate_propagates_nonfinite(backend, dtype, check):
    out = backend.grad_accumulate(arr([1, INF, NAN], dtype), arr([NAN, -INF, 1], dtype))
    check.close(out, np.array([NAN, NAN, NAN]), "accumulate", dtype=dtype)


def test_backprop05_scale_golden(backend, dtype, check):
    # scale(0.5): 2 -> 1
    out = backend.grad_scale(np.full(10, 2.0, dtype=dtype), 0.5)
    check.exact(out, np.ones(10, dtype=dtype), "scale")


def test_backprop15_average_by_scaling(backend, dtype, check):
    # average_gradients(5): 10 * (1 / 5) -> 2
    out = backend.grad_scale(np.full(10, 10.0, dtype=dtype), 1 / 5)
    check.close(out, np.full(10, 2.0), "scale", dtype=dtype)


@pytest.mark.parametrize("p", SIZES)
def test_scale_rounds_the_factor_to_the_dtype_first(backend, dtype, rng, check, p):
    # g * dtype(factor) bit for bit: -0.37 is not exact in binary, and for
    # float32 multiplying by the float64 factor and rounding the product gives
    # other bits for some elements (asserted below, so the check can fail).
    g = normal(rng, (p,), dtype)
    want = g * np.asarray(-0.37, dtype=dtype)
    check.exact(backend.grad_scale(g, -0.37), want, "scale")
    if dtype == np.float32 and p >= 100:
        unrounded = (g.astype(np.float64) * -0.37).astype(np.float32)
        assert (unrounded != want).any()


def test_scale_zero_and_negative(backend, dtype, check):
    g = arr([1.5, -2.0, 0.0], dtype)
    check.close(backend.grad_scale(g, 0), np.zeros(3), "scale", dtype=dtype)
    check.exact(backend.grad_scale(g, -2.0), arr([-3.0, 4.0, -0.0], dtype), "scale")


@pytest.mark.parametrize("factor", [NAN, INF, -INF, "2", None, True])
def test_scale_bad_factor(backend, dtype, factor):
    with pytest.raises(ConfigError):
        backend.grad_scale(arr([1.0, 2.0], dtype), factor)


# ======================================================= tree reduction ====
def explicit_tree(b: list[np.ndarray]) -> np.ndarray:
    """The spec's order for K = 1..8, written out by hand (not by a loop)."""
    k = len(b)
    if k == 1:
        return b[0].copy()
    if k == 2:
        return b[0] + b[1]
    if k == 3:
        return (b[0] + b[1]) + b[2]
    if k == 4:
        return (b[0] + b[1]) + (b[2] + b[3])
    if k == 5:
        return ((b[0] + b[1]) + (b[2] + b[3])) + b[4]
    if k == 6:
        return ((b[0] + b[1]) + (b[2] + b[3])) + (b[4] + b[5])
    if k == 7:
        return ((b[0] + b[1]) + (b[2] + b[3])) + ((b[4] + b[5]) + b[6])
    if k == 8:
        return ((b[0] + b[1]) + (b[2] + b[3])) + ((b[4] + b[5]) + (b[6] + b[7]))
    raise ValueError(k)


@pytest.mark.parametrize("k", range(1, 9))
def test_tree_reduce_is_the_fixed_pairwise_tree_bitwise(backend, dtype, rng, check, k):
    # values of mixed magnitude so that different orders round differently
    buffers = [
        normal(rng, (65,), dtype, scale=10.0 ** rng.integers(-3, 4)) for _ in range(k)
    ]
    check.exact(backend.grad_tree_reduce(buffers), explicit_tree(buffers), "tree")


def test_tree_reduce_differs_from_left_to_right(backend, check):
    # float32, ulp(1e8) = 8: the tree gives (1e8 + 1) + (-1e8 + 1) = 1e8 - 1e8 = 0,
    # the left-to-right sum ((1e8 + 1) - 1e8) + 1 = 0 + 1 = 1. IEEE rounding makes
    # both results certain.
    if np.dtype(np.float32) not in {np.dtype(d) for d in backend.dtypes}:
        pytest.skip(f"{backend.name} has no float32")
    buffers = [np.array([v], dtype=np.float32) for v in (1e8, 1.0, -1e8, 1.0)]
    check.exact(backend.grad_tree_reduce(buffers), np.zeros(1, np.float32), "tree")
    naive = ((buffers[0] + buffers[1]) + buffers[2]) + buffers[3]
    assert naive[0] == 1.0


def test_backprop14_tree_of_two_children(backend, dtype, check):
    # children of 1s and 2s -> 3 (also the seed's merge_buffers, backprop test 20)
    out = backend.grad_tree_reduce([np.ones(100, dtype), np.full(100, 2.0, dtype)])
    check.exact(out, np.full(100, 3.0, dtype=dtype), "tree")


@pytest.mark.parametrize("p", SIZES)
def test_tree_reduce_matches_oracle(backend, dtype, oracle, rng, check, p):
    buffers = [normal(rng, (p,), dtype) for _ in range(5)]
    check.close(
        backend.grad_tree_reduce(buffers),
        oracle.grad_tree_reduce(as_oracle(*buffers)),
        "tree",
        dtype=dtype,
    )


def test_tree_reduce_single_buffer_is_a_copy(backend, dtype, rng, check):
    g = normal(rng, (17,), dtype)
    out = backend.grad_tree_reduce([g])
    check.exact(out, g, "tree")
    assert not np.shares_memory(out, g)


def test_tree_reduce_bad_inputs(backend, dtype):
    other = np.float32 if dtype == np.float64 else np.float64
    with pytest.raises(EmptyInputError):
        backend.grad_tree_reduce([])
    with pytest.raises(ShapeError):
        backend.grad_tree_reduce([np.ones(3, dtype), np.ones(4, dtype)])
    with pytest.raises(DTypeError):
        backend.grad_tree_reduce([np.ones(3, dtype), np.ones(3, other)])
    with pytest.raises(DTypeError):
        backend.grad_tree_reduce(np.ones((2, 3), dtype))


@settings(
    # `check` is stateless between examples; keep the profile's too_slow waiver
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 8), p=st.integers(1, 70))
def test_tree_reduce_deterministic_and_pure(backend, dtype, check, seed, k, p):
    rng = np.random.default_rng(seed)
    buffers = [normal(rng, (p,), dtype, scale=100.0) for _ in range(k)]
    saved = [b.copy() for b in buffers]
    first = backend.grad_tree_reduce(buffers)
    check.exact(backend.grad_tree_reduce(buffers), first, "tree")
    check.exact(first, explicit_tree(saved), "tree")
    for now, before in zip(buffers, saved, strict=True):
        check.exact(now, before, "buffers unchanged")


# ====================================================== determinism ====
def test_all_ops_deterministic_and_pure(backend, dtype, rng, check):
    g = normal(rng, (1025,), dtype)
    h = normal(rng, (1025,), dtype)
    g0, h0 = g.copy(), h.copy()

    def run() -> list[np.ndarray]:
        return [
            backend.clip_grad_norm(g, 1.0)[0],
            backend.clip_grad_value(g, 0.3),
            backend.grad_accumulate(g, h),
            backend.grad_scale(g, 0.7),
            np.array([backend.grad_global_norm(g), *backend.grad_stats(g)[:4]]),
        ]

    first, second = run(), run()
    for a, b in zip(first, second, strict=True):
        check.exact(a, b, "repeat")
    check.exact(g, g0, "g unchanged")
    check.exact(h, h0, "h unchanged")
