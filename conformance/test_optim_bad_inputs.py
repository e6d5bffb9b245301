"""Conformance of the optimizers' error contract.

Spec: ``cllm_spec.optim``. A bad params array to an ``init_*_state``, a bad
array or state to a step (dtype, shape, empty, non-finite, a state of another
optimizer or step count) and a hyperparameter out of range each raise their
typed error; the closed ends of PyTorch's ranges are accepted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cllm_spec import optim as spec
from cllm_spec.errors import (
    ConfigError,
    DTypeError,
    EmptyInputError,
    NonFiniteError,
    ShapeError,
)
from conformance.optim_helpers import F64, INIT, KINDS


# ------------------------------------------------------ bad init params -----
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (np.arange(4), DTypeError),
        ([1.0, 2.0], DTypeError),
        (np.ones((2, 2)), ShapeError),
        (np.ones(0), EmptyInputError),
    ],
    ids=["int", "list", "rank2", "empty"],
)
def test_init_state_rejects_bad_params(kind, bad, error):
    with pytest.raises(error):
        INIT[kind](bad)


def test_init_adagrad_rejects_negative_accumulator():
    with pytest.raises(ConfigError, match="initial_accumulator_value"):
        spec.init_adagrad_state(np.ones(3), initial_accumulator_value=-0.1)


# ------------------------------------------------------- bad arrays -----
def _other(dt: np.dtype) -> np.dtype:
    return np.dtype(np.float32) if dt == F64 else F64


def _fault(kind: str, fault: str, dt: np.dtype) -> tuple[Any, Any, Any]:
    """(params, grads, state) with exactly one fault of the named kind."""
    p = np.linspace(-1.0, 1.0, 5).astype(dt)
    g = np.linspace(0.5, -0.5, 5).astype(dt)
    state = INIT[kind](p)
    first = state._fields[0]
    bad_state = {
        "state-shape": lambda: state._replace(**{first: np.zeros(6, dt)}),
        "state-dtype": lambda: state._replace(**{first: np.zeros(5, _other(dt))}),
        "state-nan": lambda: state._replace(**{first: np.full(5, np.nan, dt)}),
        "state-type": lambda: INIT["adagrad" if kind != "adagrad" else "sgd"](p),
        "state-step": lambda: state._replace(step=-1),
        "state-step-float": lambda: state._replace(step=1.0),
    }
    if fault in bad_state:
        return p, g, bad_state[fault]()
    g_nan, p_inf = g.copy(), p.copy()
    g_nan[2], p_inf[4] = np.nan, np.inf
    return {
        "params-int": (np.arange(5), g, state),
        "grads-int": (p, np.arange(5), state),
        "mixed-dtype": (p, g.astype(_other(dt)), state),
        "params-rank2": (p.reshape(1, 5), g.reshape(1, 5), state),
        "grads-shape": (p, g[:4], state),
        "empty": (p[:0], g[:0], INIT[kind](np.ones(1, dt))),
        "grads-nan": (p, g_nan, state),
        "params-inf": (p_inf, g, state),
    }[fault]


FAULTS = {
    "params-int": DTypeError,
    "grads-int": DTypeError,
    "mixed-dtype": DTypeError,
    "params-rank2": ShapeError,
    "grads-shape": ShapeError,
    "empty": EmptyInputError,
    "grads-nan": NonFiniteError,
    "params-inf": NonFiniteError,
    "state-shape": ShapeError,
    "state-dtype": DTypeError,
    "state-nan": NonFiniteError,
    "state-type": DTypeError,
    "state-step": ConfigError,
    "state-step-float": ConfigError,
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault", FAULTS)
def test_bad_arrays_raise_typed_errors(backend, kind, fault):
    dt = np.dtype(backend.dtypes[0])
    p, g, state = _fault(kind, fault, dt)
    hyper = {"lr": 0.1} if kind == "sgd" else {}
    with pytest.raises(FAULTS[fault]):
        getattr(backend, f"{kind}_step")(p, g, state, **hyper)


# ------------------------------------------------- bad hyperparameters -----
NAN, INF = float("nan"), float("inf")
BAD_HYPER = [
    # seed optimizer test 19: a negative lr and beta1 = 1.5 are invalid
    ("sgd", {"lr": -0.001}, "lr"),
    ("adam", {"betas": (1.5, 0.999)}, r"betas\[0\]"),
    ("sgd", {"lr": NAN}, "lr"),
    ("sgd", {"lr": "0.1"}, "lr"),
    ("sgd", {"lr": 0.1, "momentum": -0.9}, "momentum"),
    ("sgd", {"lr": 0.1, "weight_decay": -1e-4}, "weight_decay"),
    ("sgd", {"lr": 0.1, "dampening": INF}, "dampening"),
    ("sgd", {"lr": 0.1, "nesterov": True}, "nesterov"),  # momentum 0
    (
        "sgd",
        {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": True},
        "nesterov",
    ),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": 1}, "nesterov"),
    ("adam", {"lr": INF}, "lr"),
    ("adam", {"betas": (0.9, 1.0)}, r"betas\[1\]"),
    ("adam", {"betas": (-0.1, 0.999)}, r"betas\[0\]"),
    ("adam", {"betas": (0.9,)}, "betas"),
    ("adam", {"eps": -1e-8}, "eps"),
    ("adam", {"weight_decay": -0.1}, "weight_decay"),
    ("adam", {"amsgrad": "yes"}, "amsgrad"),
    ("adamw", {"lr": -1e-3}, "lr"),
    ("adamw", {"weight_decay": NAN}, "weight_decay"),
    ("adamw", {"betas": (0.9, 1.5)}, r"betas\[1\]"),
    ("rmsprop", {"alpha": 1.5}, "alpha"),
    ("rmsprop", {"alpha": -0.1}, "alpha"),
    ("rmsprop", {"momentum": -0.5}, "momentum"),
    ("rmsprop", {"eps": -1.0}, "eps"),
    ("rmsprop", {"centered": None}, "centered"),
    ("adagrad", {"lr_decay": -0.1}, "lr_decay"),
    ("adagrad", {"eps": -1e-10}, "eps"),
    ("adagrad", {"weight_decay": -0.1}, "weight_decay"),
    ("adagrad", {"lr": -0.01}, "lr"),
]


BAD_HYPER_IDS = [f"{k}-{f}-{i}" for i, (k, _, f) in enumerate(BAD_HYPER)]


@pytest.mark.parametrize(("kind", "hyper", "field"), BAD_HYPER, ids=BAD_HYPER_IDS)
def test_bad_hyperparameters_raise_config_error(backend, kind, hyper, field):
    p = np.ones(3, np.dtype(backend.dtypes[0]))
    with pytest.raises(ConfigError, match=field):
        getattr(backend, f"{kind}_step")(p, p, INIT[kind](p), **hyper)


@pytest.mark.parametrize(
    ("kind", "hyper"),
    [
        ("sgd", {"lr": 0.0, "momentum": 0.0, "dampening": -0.5}),
        ("adam", {"betas": (0.0, 0.0), "eps": 0.0}),
        ("adamw", {"weight_decay": 0.0, "lr": 0.0}),
        ("rmsprop", {"alpha": 0.0}),
        ("rmsprop", {"alpha": 1.0}),
        ("adagrad", {"lr_decay": 0.0, "eps": 0.0}),
    ],
)
def test_boundary_hyperparameters_are_accepted(backend, kind, hyper):
    # The closed ends of PyTorch's ranges are valid (eps 0 is fine with g != 0).
    p = np.ones(3, np.dtype(backend.dtypes[0]))
    new_p, state = getattr(backend, f"{kind}_step")(p, p, INIT[kind](p), **hyper)
    assert state.step == 1 and np.all(np.isfinite(new_p))
