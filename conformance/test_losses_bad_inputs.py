"""Conformance of the losses on bad inputs: each is refused with a typed error.

Spec: ``cllm_spec.losses``. Softmax and log softmax, cross-entropy and the
regression losses refuse a bad dtype, shape, empty or non-finite input, target
id, hyperparameter or upstream gradient. ``test_loss13_*`` is test 13 (NaN / inf
detection) of the seed project's ``tests/unit/test_loss.c``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
from conformance.losses_helpers import (
    KINDS,
    REDUCTIONS,
    SEED_LOGITS,
    SEED_TARGETS,
    regression,
)

# ====================================================== softmax family ====
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


# ======================================================= cross-entropy ====
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


# =================================================== regression losses ====
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
