"""Filtering and probabilities in ``cllm_spec.sampling``: top-k and top-p kept
sets worked out by hand, ties at the cut all kept, top-k applied before top-p
and temperature before both, temperature in closed form, and probabilities
that sum to one on the kept set and stay exact for huge logits."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cllm_spec.sampling import (
    SamplingConfig,
    filter_logits,
    probabilities,
    sample,
)
from tests.sampling_helpers import DTYPES, NUCLEUS, NUCLEUS_Q

EDGE_SIZES = (1, 3, 7, 15, 16, 17, 31, 33, 63, 65)
PROPERTY = settings(derandomize=True, deadline=None, max_examples=60)


def kept(filtered: np.ndarray) -> list[int]:
    """Ids with a finite filtered logit, in id order."""
    return [int(i) for i in np.flatnonzero(np.isfinite(filtered))]


# ---------------------------------------------------------------------- top-k ---
@pytest.mark.parametrize("dtype", DTYPES)
def test_top_k_keeps_the_largest_even_at_the_end_of_the_vocab(dtype):
    # logits 0..9: the 3 largest are the LAST ids, so "the first k ids" fails
    x = np.arange(10, dtype=dtype)
    out = filter_logits(x, top_k=3)
    assert out.dtype == dtype
    assert kept(out) == [7, 8, 9]
    np.testing.assert_array_equal(out[7:], x[7:])  # kept values untouched
    assert np.all(out[:7] == -np.inf)


def test_top_k_sampling_never_leaves_the_k_largest():
    x = np.arange(10, dtype=np.float64) * 0.1  # nearly flat: every id is likely
    ids = sample(
        np.tile(x, (2000, 1)), SamplingConfig(top_k=3), np.random.default_rng(1)
    )
    assert set(ids.tolist()) == {7, 8, 9}


@pytest.mark.parametrize(
    ("k", "expected"),
    [
        # [1, 2, 2, 2, 0]: sorted 2, 2, 2, 1, 0; the k-th value t_k, keep x >= t_k
        (1, [1, 2, 3]),  # t_1 = 2: all three tied maxima stay
        (2, [1, 2, 3]),  # t_2 = 2
        (3, [1, 2, 3]),  # t_3 = 2
        (4, [0, 1, 2, 3]),  # t_4 = 1
        (5, [0, 1, 2, 3, 4]),  # t_5 = 0 = V: everything
    ],
)
def test_top_k_ties_at_the_kth_value_are_all_kept(k, expected):
    assert kept(filter_logits(np.array([1.0, 2.0, 2.0, 2.0, 0.0]), top_k=k)) == expected


@PROPERTY
@given(v=st.sampled_from(EDGE_SIZES), data=st.data())
def test_top_k_distinct_values_keep_exactly_the_k_largest(v, data):
    k = data.draw(st.integers(1, v))
    perm = np.array(data.draw(st.permutations(range(v))))
    x = perm.astype(np.float32) * 0.5 - 3.0  # distinct values, random positions
    largest = sorted(range(v), key=lambda i: -x[i])[:k]
    assert kept(filter_logits(x, top_k=k)) == sorted(largest)


# ---------------------------------------------------------------------- top-p ---
@pytest.mark.parametrize(
    ("p", "n_kept"),
    [
        # q = [0.5, 0.3, 0.15, 0.05], cumulative c = [0.5, 0.8, 0.95, 1.0];
        # keep the smallest prefix with c_r >= p
        (0.1, 1),  # 0.5 >= 0.1
        (0.5, 1),  # 0.5 >= 0.5: exact boundary, still one token
        (0.500001, 2),
        (0.8, 2),  # 0.5 + 0.3 = 0.8 >= 0.8: exact boundary
        (0.800001, 3),  # a shortfall of 1e-6 is real: the nucleus grows
        (0.81, 3),
        (0.95, 3),
        (0.96, 4),
        (1.0, 4),
    ],
)
def test_top_p_golden(p, n_kept):
    assert kept(filter_logits(NUCLEUS, top_p=p)) == list(range(n_kept))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("p", "expected"), [(0.7, [1, 2]), (0.9, [1, 2, 3])])
def test_top_p_follows_the_logits_not_the_ids(dtype, p, expected):
    # the same q shuffled: ids 0..3 hold 0.05, 0.3, 0.5, 0.15; p away from any
    # boundary, so float32 logits give the same sets (c = 0.5, 0.8, 0.95)
    x = np.log(np.array([0.05, 0.3, 0.5, 0.15])).astype(dtype)
    assert kept(filter_logits(x, top_p=p)) == expected


def test_top_p_renormalises_over_the_nucleus():
    # p = 0.8 keeps {0.5, 0.3}: 0.5/0.8 = 0.625, 0.3/0.8 = 0.375
    np.testing.assert_allclose(
        probabilities(NUCLEUS, top_p=0.8), [0.625, 0.375, 0.0, 0.0], rtol=1e-14
    )
    # p = 0.81 keeps 0.95 of the mass
    np.testing.assert_allclose(
        probabilities(NUCLEUS, top_p=0.81),
        [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0],
        rtol=1e-14,
    )


def test_top_p_keeps_tokens_tied_with_the_last_member():
    # q = [0.4, 0.2, 0.2, 0.2] (the 0.2 logits bitwise equal): p = 0.5 is reached
    # at the first 0.2, so every 0.2 is tied with it and stays
    x = np.log(np.array([0.2, 0.4, 0.2, 0.2]))
    assert kept(filter_logits(x, top_p=0.5)) == [0, 1, 2, 3]
    assert kept(filter_logits(x, top_p=0.4)) == [1]


def test_top_p_always_keeps_the_top_token():
    x = np.array([0.0, 0.0, 5.0, 0.0])  # q_2 = e^5 / (e^5 + 3) ~ 0.98
    for p in (1e-12, 0.01, 0.5, 0.98):
        assert kept(filter_logits(x, top_p=p)) == [2]


def test_top_k_is_applied_before_top_p():
    # q = [0.4, 0.3, 0.2, 0.1], k = 2 leaves [0.4, 0.3] renormalised to
    # [4/7, 3/7] = [0.571, 0.429]; p = 0.55 <= 0.571 keeps one token.
    # top-p first would keep two (0.4 < 0.55 <= 0.7).
    x = np.log(np.array([0.4, 0.3, 0.2, 0.1]))
    assert kept(filter_logits(x, top_k=2, top_p=0.55)) == [0]
    np.testing.assert_allclose(
        probabilities(x, top_k=2, top_p=0.6), [4 / 7, 3 / 7, 0.0, 0.0], rtol=1e-14
    )


def _softmax64(x: np.ndarray) -> np.ndarray:
    z = np.exp(x.astype(np.float64) - x.max())
    return z / z.sum()


@PROPERTY
@given(
    v=st.sampled_from(EDGE_SIZES),
    p=st.sampled_from([0.05, 0.3, 0.5, 0.77, 0.9, 0.99]),
    data=st.data(),
)
def test_top_p_kept_set_is_the_minimal_nucleus(v, p, data):
    # small integer logits: ties happen, and every value is exact in float32
    x = np.array(data.draw(st.lists(st.integers(-4, 4), min_size=v, max_size=v)))
    x = x.astype(np.float32)
    keep = np.isfinite(filter_logits(x, top_p=p))
    q = _softmax64(x)
    t = x[keep].min()
    np.testing.assert_array_equal(keep, x >= t)  # a value threshold
    assert keep[np.argmax(x)]
    assert q[keep].sum() >= p - 1e-9  # the nucleus reaches p ...
    assert q[x > t].sum() < p  # ... and without its lowest value it does not


@PROPERTY
@given(v=st.sampled_from(EDGE_SIZES), data=st.data())
def test_filter_is_permutation_equivariant_and_rowwise(v, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = np.round(rng.normal(size=(4, v)), 1)  # rounding makes ties likely
    k = data.draw(st.integers(1, v))
    p = data.draw(st.sampled_from([None, 0.3, 0.8, 1.0]))
    out = filter_logits(x, top_k=k, top_p=p)
    perm = rng.permutation(v)
    np.testing.assert_array_equal(
        filter_logits(x[:, perm], top_k=k, top_p=p), out[:, perm]
    )
    for b in range(4):  # the batched call equals one call per row
        np.testing.assert_array_equal(filter_logits(x[b], top_k=k, top_p=p), out[b])


def test_large_vocab_with_both_filters():
    v = 50257
    x = np.linspace(-10.0, 10.0, v)  # increasing: the largest logits are last
    out = filter_logits(x, top_k=50, top_p=0.9)
    ids = kept(out)
    assert ids[-1] == v - 1 and len(ids) <= 50 and ids == list(range(v - len(ids), v))


# ---------------------------------------------------------------- temperature ---
@pytest.mark.parametrize(("dtype", "rtol"), [(np.float32, 1e-6), (np.float64, 1e-14)])
@pytest.mark.parametrize(
    ("t", "expected"),
    [
        # x = [0, ln 2, ln 4]: softmax(x / T) is proportional to [1, 2, 4]^(1/T)
        (1.0, [1 / 7, 2 / 7, 4 / 7]),
        (0.5, [1 / 21, 4 / 21, 16 / 21]),  # [1, 4, 16]
        (
            2.0,
            [
                1 / (3 + math.sqrt(2)),
                math.sqrt(2) / (3 + math.sqrt(2)),
                2 / (3 + math.sqrt(2)),
            ],
        ),
    ],
)
def test_temperature_golden(dtype, rtol, t, expected):
    x = np.array([0.0, math.log(2.0), math.log(4.0)], dtype=dtype)
    out = probabilities(x, temperature=t)
    assert out.dtype == dtype
    np.testing.assert_allclose(out, expected, rtol=rtol)


def test_temperature_is_applied_before_top_p():
    # T = 2 turns q = [0.5, 0.3, 0.15, 0.05] into sqrt(q) / sum sqrt(q)
    # = [0.379, 0.294, 0.208, 0.120]: cumulative 0.379, 0.673, 0.880, so p = 0.8
    # now needs three tokens (at T = 1 it needed two)
    s = np.sqrt(NUCLEUS_Q[:3])
    np.testing.assert_allclose(
        probabilities(NUCLEUS, temperature=2.0, top_p=0.8),
        np.append(s / s.sum(), 0.0),
        rtol=1e-14,
    )


def test_low_temperature_approaches_greedy():
    x = np.array([0.3, 2.0, 1.9, -1.0])  # argmax 1, gap 0.1 to the runner-up
    top = [probabilities(x, temperature=t)[1] for t in (1.0, 0.3, 0.1, 0.03, 0.01)]
    assert all(a < b for a, b in zip(top, top[1:], strict=False))
    # T = 1e-3: the runner-up weighs exp(-0.1 / 1e-3) = exp(-100) ~ 3.7e-44
    assert probabilities(x, temperature=1e-3)[1] == 1.0
    ids = sample(
        np.tile(x, (500, 1)), SamplingConfig(temperature=1e-3), np.random.default_rng(3)
    )
    assert np.all(ids == 1)


def test_tiny_temperature_does_not_overflow():
    # (x - max) / T <= 0, so T = 1e-300 gives -inf weights, never +inf or NaN
    out = probabilities(np.array([1.0, 3.0, 2.0, 3.0]), temperature=1e-300)
    np.testing.assert_array_equal(out, [0.0, 0.5, 0.0, 0.5])  # tied maxima share


# -------------------------------------------------------------- probabilities ---
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("v", EDGE_SIZES)
def test_probabilities_are_a_distribution_on_the_kept_set(dtype, v):
    rng = np.random.default_rng(v)
    x = (3.0 * rng.normal(size=(5, v))).astype(dtype)
    k = max(1, v // 2)
    probs = probabilities(x, temperature=0.7, top_k=k, top_p=0.9)
    assert probs.dtype == dtype and probs.shape == x.shape
    np.testing.assert_allclose(
        probs.sum(axis=-1), 1.0, rtol=1e-6 if dtype == np.float32 else 1e-13
    )
    filtered = filter_logits(x, top_k=k, top_p=None)
    assert np.all(probs[np.isinf(filtered)] == 0.0)  # top-k losers get exactly 0


@pytest.mark.parametrize("v", EDGE_SIZES)
def test_probabilities_without_filters_is_the_softmax(v):
    x = np.random.default_rng(v).normal(size=v) * 4.0
    np.testing.assert_allclose(probabilities(x), _softmax64(x), rtol=1e-13)


def test_probabilities_of_filtered_logits_match_the_filtered_probabilities():
    # filter_logits' output (with -inf) is valid input; at T = 1 its softmax is
    # the distribution probabilities() builds from the raw logits
    x = np.random.default_rng(5).normal(size=(3, 33))
    filtered = filter_logits(x, top_k=10, top_p=0.6)
    np.testing.assert_allclose(
        probabilities(filtered),
        probabilities(x, top_k=10, top_p=0.6),
        rtol=1e-13,
        atol=0.0,
    )


def test_probabilities_are_stable_for_huge_logits():
    np.testing.assert_array_equal(probabilities(np.array([1e300, 0.0])), [1.0, 0.0])
    out = probabilities(np.array([3e38, -3e38, 3e38], dtype=np.float32))
    np.testing.assert_array_equal(out, [0.5, 0.0, 0.5])
