"""Evaluation metrics (``cllm_spec.metrics``) on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cllm_spec.errors import (
    ConfigError,
    DTypeError,
    EmptyInputError,
    IdRangeError,
    NonFiniteError,
    ShapeError,
)
from cllm_spec.metrics import (
    macro_precision_recall_f1,
    perplexity,
    token_accuracy,
    top_k_accuracy,
)

FLOATS = [np.float32, np.float64]
INTS = [np.int32, np.int64]


# ---------------------------------------------------------------- perplexity ---
def test_perplexity_of_known_losses():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(50.0)) == pytest.approx(50.0, rel=1e-14)
    # a uniform guess over V classes has CE log V and perplexity V
    assert perplexity(np.float32(math.log(7.0))) == pytest.approx(7.0, rel=1e-6)


@pytest.mark.parametrize("dtype", FLOATS)
def test_perplexity_of_per_token_losses_is_exp_of_the_mean(dtype):
    # exp((log 2 + log 8) / 2) = exp(log 4) = 4: the geometric mean of 2 and 8,
    # not the mean of the per-token perplexities (5).
    losses = np.array([math.log(2.0), math.log(8.0)], dtype)
    assert perplexity(losses) == pytest.approx(4.0, rel=1e-6)
    grid = np.log(np.arange(1, 7, dtype=np.float64)).reshape(2, 3).astype(dtype)
    assert perplexity(grid) == pytest.approx(720.0 ** (1 / 6), rel=1e-6)


def test_perplexity_overflow_is_inf():
    assert perplexity(709.0) == pytest.approx(math.exp(709.0), rel=1e-14)
    assert perplexity(710.0) == math.inf
    assert perplexity(1e6) == math.inf
    assert perplexity(math.inf) == math.inf
    assert perplexity(np.array([1.0, np.inf])) == math.inf


@pytest.mark.parametrize(
    ("loss", "error"),
    [
        (-0.1, ConfigError),
        (np.array([1.0, -1e-3, 2.0]), ConfigError),  # mean > 0, one value < 0
        (math.nan, NonFiniteError),
        (np.array([1.0, np.nan]), NonFiniteError),
        (np.array([np.inf, -np.inf]), ConfigError),
        ("2.0", ConfigError),
        (None, ConfigError),
        (np.zeros(0), EmptyInputError),
        (np.array([1, 2]), DTypeError),
    ],
)
def test_perplexity_rejects(loss, error):
    with pytest.raises(error):
        perplexity(loss)


# ------------------------------------------------------- token accuracy -----
# argmax per row: 0, 1, 0 (a tie between 0 and 1 goes to the lower index), 2
SCORES = [[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 5.0]]


@pytest.mark.parametrize("fdt", FLOATS)
@pytest.mark.parametrize("idt", INTS)
@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        ([0, 2, 1, 2], 2 / 4),  # hits: row 0, row 3 (row 2's tie picks 0)
        ([0, 1, 0, 2], 4 / 4),  # the tie counts for class 0
        ([1, 0, 1, 0], 0 / 4),
        ([0, -100, 1, 2], 2 / 3),  # row 1 ignored: hits 0 and 3 of rows 0, 2, 3
        ([-100, -100, 0, -100], 1 / 1),
    ],
)
def test_token_accuracy_table(fdt, idt, targets, expected):
    logits = np.array(SCORES, fdt)
    assert token_accuracy(logits, np.array(targets, idt)) == pytest.approx(expected)


def test_token_accuracy_custom_ignore_index_and_infinite_scores():
    logits = np.array([[-np.inf, 1.0], [np.inf, 0.0], [0.0, 1.0]])
    # ignore_index 0 drops row 1 (target 0): rows 0 and 2 both hit class 1
    assert token_accuracy(logits, np.array([1, 0, 1]), ignore_index=0) == 1.0
    assert token_accuracy(logits, np.array([1, 0, 0])) == pytest.approx(2 / 3)


# -------------------------------------------------------- top-k accuracy -----
# Ranking (ties toward the lower index):
#   row 0: 3 (.9), 1 (.5), 2 (.2), 0 (.1)   target 2 has rank 2
#   row 1: 0, 1, 2 (all 1.0), 3 (0)          target 2 has rank 2 (0, 1 tie above)
#   row 2: 1, 3 (both 2.0), 2, 0 (-inf)      target 3 has rank 1
TOPK = [[0.1, 0.5, 0.2, 0.9], [1.0, 1.0, 1.0, 0.0], [-np.inf, 2.0, -1.0, 2.0]]


@pytest.mark.parametrize("fdt", FLOATS)
@pytest.mark.parametrize(("k", "expected"), [(1, 0.0), (2, 1 / 3), (3, 1.0), (4, 1.0)])
def test_top_k_accuracy_table(fdt, k, expected):
    logits = np.array(TOPK, fdt)
    targets = np.array([2, 2, 3])
    assert top_k_accuracy(logits, targets, k) == pytest.approx(expected)


def test_top_k_ignores_positions():
    logits = np.array(TOPK)
    # only row 2 is kept, its target ranks 1: a miss at k = 1, a hit at k = 2
    targets = np.array([-100, -100, 3])
    assert top_k_accuracy(logits, targets, 1) == 0.0
    assert top_k_accuracy(logits, targets, 2) == 1.0


def test_top_1_equals_token_accuracy_and_grows_with_k():
    rng = np.random.default_rng(0)
    # small integer scores, so that many rows contain ties
    logits = rng.integers(-2, 3, size=(200, 9)).astype(np.float64)
    targets = rng.integers(0, 9, size=200)
    targets[::7] = -100
    top1 = top_k_accuracy(logits, targets, 1)
    assert top1 == token_accuracy(logits, targets)
    values = [top_k_accuracy(logits, targets, k) for k in range(1, 10)]
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))
    assert values[-1] == 1.0


@pytest.mark.parametrize("k", [0, 5, -1, 1.0, True])
def test_top_k_rejects_bad_k(k):
    with pytest.raises(ConfigError, match="k"):
        top_k_accuracy(np.array(TOPK), np.array([0, 1, 2]), k)


# ------------------------------------------------------- macro P / R / F1 -----
def test_macro_prf_hand_computed():
    # class 0: tp 1, predicted 3 times, true once -> P 1/3, R 1,   F1 2/4
    # class 1: tp 2, predicted twice, true 3 times -> P 1,   R 2/3, F1 4/5
    # class 2: tp 1, predicted once, true twice    -> P 1,   R 1/2, F1 2/3
    # class 3 occurs nowhere and is left out of the averages.
    pred = np.array([0, 0, 1, 1, 2, 0])
    targets = np.array([0, 1, 1, 1, 2, 2])
    p, r, f1 = macro_precision_recall_f1(pred, targets, num_classes=4)
    assert p == pytest.approx(7 / 9)  # (1/3 + 1 + 1) / 3
    assert r == pytest.approx(13 / 18)  # (1 + 2/3 + 1/2) / 3
    assert f1 == pytest.approx(59 / 90)  # (1/2 + 4/5 + 2/3) / 3


def test_macro_prf_class_only_predicted_counts_with_zero():
    # class 0: tp 1, predicted once, true twice -> P 1, R 1/2, F1 2/3
    # class 3: predicted once, never true       -> P 0, R 0 (0/0), F1 0
    # classes 1 and 2 occur nowhere: averaging them in as 0 would give P 1/4.
    p, r, f1 = macro_precision_recall_f1(np.array([0, 3]), np.array([0, 0]), 4)
    assert (p, r, f1) == pytest.approx((0.5, 0.25, 1 / 3))


def test_macro_prf_class_only_true_counts_with_zero():
    # class 1 is never predicted: P 0 (0/0), R 0, F1 0; class 0: P 1/2, R 1, F1 2/3
    p, r, f1 = macro_precision_recall_f1(np.array([0, 0]), np.array([0, 1]), 2)
    assert (p, r, f1) == pytest.approx((0.25, 0.5, 1 / 3))


@pytest.mark.parametrize("idt", INTS)
def test_macro_prf_perfect_and_ignored(idt):
    pred = np.array([0, 1, 1, 2], idt)
    targets = np.array([0, -100, 1, 2], idt)  # the wrong prediction is ignored
    assert macro_precision_recall_f1(pred, targets, 3) == (1.0, 1.0, 1.0)
    targets = np.array([7, 1, 1, 7], idt)
    assert macro_precision_recall_f1(pred, targets, 3, ignore_index=7) == (
        1.0,
        1.0,
        1.0,
    )


# ------------------------------------------------------------- bad inputs -----
LOGITS = np.array(SCORES)
TARGETS = np.array([0, 2, 1, 2])


@pytest.mark.parametrize(
    ("logits", "targets", "error"),
    [
        (LOGITS.astype(np.int64), TARGETS, DTypeError),
        (LOGITS.tolist(), TARGETS, DTypeError),
        (LOGITS, TARGETS.astype(np.float64), DTypeError),
        (LOGITS[0], TARGETS, ShapeError),
        (LOGITS[None], TARGETS, ShapeError),
        (LOGITS, TARGETS[:3], ShapeError),
        (LOGITS[:0], TARGETS[:0], EmptyInputError),
        (LOGITS[:, :0], TARGETS, EmptyInputError),
        (LOGITS, np.array([0, 3, 1, 2]), IdRangeError),
        (LOGITS, np.array([0, -1, 1, 2]), IdRangeError),
        (np.where(LOGITS == 5.0, np.nan, LOGITS), TARGETS, NonFiniteError),
        (LOGITS, np.full(4, -100), EmptyInputError),
    ],
)
@pytest.mark.parametrize("metric", ["token", "top2"])
def test_accuracy_rejects(logits, targets, error, metric):
    with pytest.raises(error):
        if metric == "token":
            token_accuracy(logits, targets)
        else:
            top_k_accuracy(logits, targets, 2)


def test_accuracy_rejects_bad_ignore_index():
    with pytest.raises(ConfigError, match="ignore_index"):
        token_accuracy(LOGITS, TARGETS, ignore_index=0.5)


@pytest.mark.parametrize(
    ("pred", "targets", "num_classes", "error"),
    [
        (np.array([0.0, 1.0]), np.array([0, 1]), 2, DTypeError),
        (np.array([0, 1]), np.array([0.0, 1.0]), 2, DTypeError),
        (np.array([[0, 1]]), np.array([[0, 1]]), 2, ShapeError),
        (np.array([0, 1]), np.array([0, 1, 1]), 2, ShapeError),
        (np.array([], np.int64), np.array([], np.int64), 2, EmptyInputError),
        (np.array([0, 2]), np.array([0, 1]), 2, IdRangeError),
        (np.array([0, 1]), np.array([0, 5]), 2, IdRangeError),
        (np.array([0, 1]), np.array([-100, -100]), 2, EmptyInputError),
        (np.array([0, 1]), np.array([0, 1]), 0, ConfigError),
        (np.array([0, 1]), np.array([0, 1]), 2.0, ConfigError),
    ],
)
def test_macro_prf_rejects(pred, targets, num_classes, error):
    with pytest.raises(error):
        macro_precision_recall_f1(pred, targets, num_classes)


# ---------------------------------------------------------------- purity -----
def test_inputs_not_mutated_and_results_repeat():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((33, 7)).astype(np.float32)
    targets = rng.integers(0, 7, 33)
    targets[::5] = -100
    pred = np.argmax(logits, axis=1)
    copies = [logits.copy(), targets.copy(), pred.copy()]
    first = (
        token_accuracy(logits, targets),
        top_k_accuracy(logits, targets, 3),
        macro_precision_recall_f1(pred, targets, 7),
        perplexity(np.abs(logits)),
    )
    again = (
        token_accuracy(logits, targets),
        top_k_accuracy(logits, targets, 3),
        macro_precision_recall_f1(pred, targets, 7),
        perplexity(np.abs(logits)),
    )
    assert first == again
    for before, after in zip(copies, (logits, targets, pred), strict=True):
        assert before.tobytes() == after.tobytes()
    assert all(isinstance(x, float) for x in (*first[:2], *first[2], first[3]))
