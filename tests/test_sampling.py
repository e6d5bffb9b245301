"""Token draws with ``cllm_spec.sampling.sample`` and ``draw``: the empirical
distribution of many draws matches the probabilities, each row uses one rng
double in row order, a seed repeats its ids, greedy takes the lowest tied id
without drawing, inputs are never mutated, and ``draw`` returns exactly what
``sample`` returns."""

from __future__ import annotations

import numpy as np
import pytest

from cllm_spec.sampling import (
    SamplingConfig,
    draw,
    filter_logits,
    probabilities,
    sample,
)
from tests.sampling_helpers import DRAW_CONFIGS, DTYPES, NUCLEUS, NUCLEUS_Q

# chi-square 0.999 quantiles, from the closed-form survival function of even df:
# P(X > x) = exp(-x/2) * sum_{j < df/2} (x/2)^j / j!  solved for 1e-3 by bisection
CHI2_999 = {2: 13.8155, 4: 18.4668}


def chi_square(counts: np.ndarray, expected_probs: np.ndarray) -> float:
    """Pearson's statistic over the categories of nonzero expected probability."""
    n = counts.sum()
    nz = expected_probs > 0
    e = n * expected_probs[nz]
    return float(np.sum((counts[nz] - e) ** 2 / e))


def draw_counts(
    logits: np.ndarray, cfg: SamplingConfig, n: int, seed: int
) -> np.ndarray:
    """Counts per id of ``n`` draws: one batched call over ``n`` copies of the row."""
    batch = np.tile(logits, (n, 1))  # (n, V)
    ids = sample(batch, cfg, np.random.default_rng(seed))
    return np.bincount(ids, minlength=logits.shape[-1])


# --------------------------------------------------------------------- sample ---
def test_sample_distribution_matches_the_probabilities():
    # 20000 draws, seed fixed: Pearson's chi-square over the 5 ids (df = 4) must
    # stay below its 0.999 quantile. The counts are a fixed function of the
    # seed, so the test is deterministic; a distribution 0.02 away on one id
    # adds about 20000 * 0.02^2 / 0.1 = 80 to the statistic.
    q = np.array([0.1, 0.15, 0.2, 0.25, 0.3])
    counts = draw_counts(np.log(q), SamplingConfig(), 20000, seed=2024)
    assert chi_square(counts, q) < CHI2_999[4]
    assert chi_square(counts, np.full(5, 0.2)) > 10 * CHI2_999[4]  # power check


def test_sample_distribution_with_top_k_and_temperature():
    # q = [0.4, 0.1, 0.2, 0.05, 0.25], top_k = 3 keeps ids 0, 4, 2 (mass 0.85);
    # T = 0.5 squares them: [0.16, 0.04, 0.0625] / 0.2625 on ids 0, 2, 4 (df = 2)
    q = np.array([0.4, 0.1, 0.2, 0.05, 0.25])
    expected = np.array([0.16, 0.0, 0.04, 0.0, 0.0625]) / 0.2625
    counts = draw_counts(
        np.log(q), SamplingConfig(temperature=0.5, top_k=3), 20000, seed=7
    )
    assert counts[1] == 0 and counts[3] == 0
    assert chi_square(counts, expected) < CHI2_999[2]
    assert counts[4] > 0  # "the first k ids" would never return id 4


def test_sample_distribution_with_top_p_and_temperature():
    # as in test_temperature_is_applied_before_top_p: sqrt(q) on the first 3 ids
    s = np.sqrt(NUCLEUS_Q[:3])
    expected = np.append(s / s.sum(), 0.0)
    counts = draw_counts(
        NUCLEUS, SamplingConfig(temperature=2.0, top_p=0.8), 20000, seed=11
    )
    assert counts[3] == 0
    assert chi_square(counts, expected) < CHI2_999[2]


def test_sample_uses_one_draw_per_row_in_row_order():
    # rows with dyadic distributions, cdf exact up to an ulp:
    #   a: q = [0.25, 0.25, 0.5]  -> id = 0 if u < 0.25, 1 if u < 0.5, else 2
    #   b: q = [0.5, 0, 0.5]      -> id = 0 if u < 0.5, else 2  (id 1 banned)
    #   c: q = [0, 0, 1]          -> always 2
    a = np.log([0.25, 0.25, 0.5])
    b = np.array([0.0, -np.inf, 0.0])
    c = np.array([-np.inf, -np.inf, 0.0])
    x = np.stack([a, b, c] * 20)  # (60, 3)
    rng = np.random.default_rng(99)
    ids = sample(x, SamplingConfig(), rng)
    u = np.random.default_rng(99).random(60)  # the documented draw: rng.random(B)
    cdfs = {0: [0.25, 0.5, 1.0], 1: [0.5, 0.5, 1.0], 2: [0.0, 0.0, 1.0]}
    expected = [
        next(v for v, c_v in enumerate(cdfs[i % 3]) if c_v > u[i]) for i in range(60)
    ]
    assert ids.tolist() == expected
    reference = np.random.default_rng(99)
    reference.random(60)
    assert rng.random() == reference.random()  # exactly 60 doubles consumed


@pytest.mark.parametrize("extra", [0, 1, 997])
def test_seed_gives_the_same_ids_whatever_the_vocab_size(extra):
    # the same distribution padded with banned ids: V changes, the ids do not
    base = np.log(np.array([0.1, 0.2, 0.3, 0.4]))
    x = np.tile(np.concatenate([base, np.full(extra, -np.inf)]), (300, 1))
    ids = sample(x, SamplingConfig(temperature=1.3), np.random.default_rng(42))
    ref = sample(
        np.tile(base, (300, 1)),
        SamplingConfig(temperature=1.3),
        np.random.default_rng(42),
    )
    np.testing.assert_array_equal(ids, ref)


def test_seed_determinism():
    x = np.random.default_rng(0).normal(size=(200, 17))
    cfg = SamplingConfig(temperature=0.9, top_k=8, top_p=0.95)
    first = sample(x, cfg, np.random.default_rng(5))
    np.testing.assert_array_equal(sample(x, cfg, np.random.default_rng(5)), first)
    assert not np.array_equal(sample(x, cfg, np.random.default_rng(6)), first)
    # a generator continues its stream: consecutive calls differ, and replay
    rng = np.random.default_rng(5)
    one, two = sample(x, cfg, rng), sample(x, cfg, rng)
    np.testing.assert_array_equal(one, first)
    assert not np.array_equal(one, two)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_shapes_and_dtype(dtype):
    x = np.array([0.1, 0.2, 0.3], dtype=dtype)
    single = sample(x, SamplingConfig(), np.random.default_rng(0))
    assert single.shape == () and single.dtype == np.int64
    batch = sample(np.stack([x, x]), SamplingConfig(), np.random.default_rng(0))
    assert batch.shape == (2,) and batch.dtype == np.int64
    assert int(batch[0]) == int(single)  # row 0 uses the first double either way


def test_greedy_takes_the_lowest_id_among_tied_maxima():
    x = np.array(
        [[1.0, 3.0, 3.0, 2.0], [5.0, -1.0, 5.0, 5.0], [-np.inf, 0.0, 7.0, 7.0]]
    )
    rng = np.random.default_rng(8)
    state = rng.bit_generator.state
    cfg = SamplingConfig(greedy=True, temperature=0.2, top_k=2, top_p=0.5)
    ids = sample(x, cfg, rng)
    assert ids.tolist() == [1, 0, 2] and ids.dtype == np.int64
    assert rng.bit_generator.state == state  # greedy draws nothing
    assert sample(x[0].astype(np.float32), cfg, rng).shape == ()


# ---------------------------------------------------------- purity, determinism ---
def test_inputs_are_not_mutated_and_results_repeat():
    x = np.random.default_rng(1).normal(size=(4, 31)).astype(np.float32)
    x[0, 3] = -np.inf
    before = x.copy()
    a = filter_logits(x, top_k=5, top_p=0.7)
    b = probabilities(x, temperature=0.8, top_k=5, top_p=0.7)
    c = sample(x, SamplingConfig(top_k=5, top_p=0.7), np.random.default_rng(4))
    np.testing.assert_array_equal(x, before)
    assert a is not x and not np.shares_memory(a, x)
    assert filter_logits(x, top_k=5, top_p=0.7).tobytes() == a.tobytes()
    assert (
        probabilities(x, temperature=0.8, top_k=5, top_p=0.7).tobytes() == b.tobytes()
    )
    repeat = sample(x, SamplingConfig(top_k=5, top_p=0.7), np.random.default_rng(4))
    assert repeat.tobytes() == c.tobytes()


# ---------------------------------------------------------------------- draw ---
@pytest.mark.parametrize("config", DRAW_CONFIGS, ids=["greedy", "sampled"])
@pytest.mark.parametrize("shape", [(50,), (1, 50), (3, 50)])
def test_draw_is_sample_for_checked_config(config, shape):
    logits = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    logits[..., 7] = -np.inf  # a forbidden token is allowed while a row has others
    a, b = np.random.default_rng(9), np.random.default_rng(9)
    want = sample(logits, config, a)
    got = draw(logits, config, b)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert a.random() == b.random()  # the same doubles drawn
