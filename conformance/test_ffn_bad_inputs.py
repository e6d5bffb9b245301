"""Conformance of the feed-forward functions on bad inputs.

Spec: ``cllm_spec.ffn``. Every forward and backward refuses a bad dtype, shape,
empty input, unknown activation, eps or cache with a typed error (None
included: the original's null_handling test).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cllm_spec.errors import ConfigError, DTypeError, EmptyInputError, ShapeError
from cllm_spec.protocols import ActivationCache, LayerNormCache, LinearCache
from conformance.ffn_helpers import KINDS


def _lin_args(**over: Any) -> tuple:
    args = {"x": np.ones((2, 3)), "w": np.ones((4, 3)), "b": np.ones(4)}
    args.update(over)
    return (args["x"], args["w"], args["b"])


LINEAR_BAD = {
    "x_none": (_lin_args(x=None), DTypeError),
    "x_list": (_lin_args(x=[[1.0, 2.0, 3.0]]), DTypeError),
    "x_int": (_lin_args(x=np.ones((2, 3), dtype=np.int64)), DTypeError),
    "x_float16": (_lin_args(x=np.ones((2, 3), dtype=np.float16)), DTypeError),
    "w_int": (_lin_args(w=np.ones((4, 3), dtype=np.int32)), DTypeError),
    "b_list": (_lin_args(b=[1.0] * 4), DTypeError),
    "mixed_x32": (_lin_args(x=np.ones((2, 3), dtype=np.float32)), DTypeError),
    "mixed_b32": (_lin_args(b=np.ones(4, dtype=np.float32)), DTypeError),
    "x_rank0": (_lin_args(x=np.array(1.0)), ShapeError),
    "w_rank1": (_lin_args(w=np.ones(3)), ShapeError),
    "w_rank3": (_lin_args(w=np.ones((1, 4, 3))), ShapeError),
    "b_rank2": (_lin_args(b=np.ones((1, 4))), ShapeError),
    "b_wrong_size": (_lin_args(b=np.ones(3)), ShapeError),
    "in_mismatch": (_lin_args(w=np.ones((4, 5))), ShapeError),
    "w_in_out_layout": (_lin_args(w=np.ones((3, 4))), ShapeError),
    "x_no_rows": (_lin_args(x=np.ones((0, 3))), EmptyInputError),
    "x_no_features": (
        _lin_args(x=np.ones((2, 0)), w=np.ones((4, 0))),
        EmptyInputError,
    ),
    "w_no_outputs": (_lin_args(w=np.ones((0, 3)), b=np.ones(0)), EmptyInputError),
}


@pytest.mark.parametrize("case", LINEAR_BAD, ids=list(LINEAR_BAD))
def test_linear_forward_bad_inputs(backend, case):
    args, error = LINEAR_BAD[case]
    with pytest.raises(error):
        backend.linear_forward(*args)


def _bad_backward_cases(dy_shape: tuple[int, ...], other_cache: Any) -> dict:
    return {
        "dy_none": (lambda c: (None, c), DTypeError),
        "dy_int": (lambda c: (np.ones(dy_shape, dtype=np.int64), c), DTypeError),
        "dy_float32": (lambda c: (np.ones(dy_shape, dtype=np.float32), c), DTypeError),
        "dy_wrong_last": (
            lambda c: (np.ones((*dy_shape[:-1], dy_shape[-1] + 1)), c),
            ShapeError,
        ),
        "dy_wrong_lead": (lambda c: (np.ones((5, *dy_shape[1:])), c), ShapeError),
        "dy_rank": (lambda c: (np.ones(dy_shape[1:]), c), ShapeError),
        "cache_tuple": (lambda c: (np.ones(dy_shape), tuple(c)), DTypeError),
        "cache_other": (lambda c: (np.ones(dy_shape), other_cache), DTypeError),
    }


_FOREIGN = LayerNormCache(np.ones((2, 3)), np.ones(2), np.ones(3))
LINEAR_BACKWARD_BAD = _bad_backward_cases((2, 4), _FOREIGN)


@pytest.mark.parametrize("case", LINEAR_BACKWARD_BAD, ids=list(LINEAR_BACKWARD_BAD))
def test_linear_backward_bad_inputs(backend, case):
    _, cache = backend.linear_forward(*_lin_args())
    make, error = LINEAR_BACKWARD_BAD[case]
    with pytest.raises(error):
        backend.linear_backward(*make(cache))


@pytest.mark.parametrize(
    "kind", ["GELU", "tanh", "swish", "", None, "gelu_erf", "none", 1]
)
def test_activation_unknown_kind(backend, kind):
    with pytest.raises(ConfigError):
        backend.activation_forward(np.ones(3), kind)


ACTIVATION_BAD = {
    "x_none": (None, DTypeError),
    "x_list": ([1.0, 2.0], DTypeError),
    "x_int": (np.ones(3, dtype=np.int32), DTypeError),
    "x_bool": (np.ones(3, dtype=bool), DTypeError),
    "x_empty": (np.ones(0), EmptyInputError),
    "x_empty_rows": (np.ones((0, 4)), EmptyInputError),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", ACTIVATION_BAD, ids=list(ACTIVATION_BAD))
def test_activation_bad_inputs(backend, case, kind):
    x, error = ACTIVATION_BAD[case]
    with pytest.raises(error):
        backend.activation_forward(x, kind)


ACTIVATION_BACKWARD_BAD = _bad_backward_cases((2, 4), _FOREIGN)


@pytest.mark.parametrize(
    "case", ACTIVATION_BACKWARD_BAD, ids=list(ACTIVATION_BACKWARD_BAD)
)
def test_activation_backward_bad_inputs(backend, case):
    _, cache = backend.activation_forward(np.ones((2, 4)), "gelu")
    make, error = ACTIVATION_BACKWARD_BAD[case]
    with pytest.raises(error):
        backend.activation_backward(*make(cache))


def test_activation_backward_bad_cache_kind(backend):
    with pytest.raises(ConfigError):
        backend.activation_backward(np.ones(3), ActivationCache(np.ones(3), "swish"))


def _ln_args(**over: Any) -> tuple:
    args = {"x": np.ones((2, 3)), "weight": np.ones(3), "bias": np.zeros(3)}
    args.update(over)
    return (args["x"], args["weight"], args["bias"])


LAYERNORM_BAD = {
    "x_none": (_ln_args(x=None), DTypeError),
    "x_int": (_ln_args(x=np.ones((2, 3), dtype=np.int64)), DTypeError),
    "weight_none": (_ln_args(weight=None), DTypeError),
    "bias_list": (_ln_args(bias=[0.0] * 3), DTypeError),
    "mixed_weight32": (_ln_args(weight=np.ones(3, dtype=np.float32)), DTypeError),
    "mixed_x32": (_ln_args(x=np.ones((2, 3), dtype=np.float32)), DTypeError),
    "x_rank0": (_ln_args(x=np.array(1.0)), ShapeError),
    "weight_size": (_ln_args(weight=np.ones(4)), ShapeError),
    "bias_size": (_ln_args(bias=np.zeros(2)), ShapeError),
    "weight_rank2": (_ln_args(weight=np.ones((1, 3))), ShapeError),
    "x_no_rows": (_ln_args(x=np.ones((0, 3))), EmptyInputError),
    "x_no_features": (
        _ln_args(x=np.ones((2, 0)), weight=np.ones(0), bias=np.zeros(0)),
        EmptyInputError,
    ),
}


@pytest.mark.parametrize("case", LAYERNORM_BAD, ids=list(LAYERNORM_BAD))
def test_layernorm_bad_inputs(backend, case):
    args, error = LAYERNORM_BAD[case]
    with pytest.raises(error):
        backend.layernorm_forward(*args)


@pytest.mark.parametrize(
    "eps", [0.0, -1e-5, float("nan"), float("inf"), "1e-5", None, True]
)
def test_layernorm_bad_eps(backend, eps):
    with pytest.raises(ConfigError):
        backend.layernorm_forward(*_ln_args(), eps=eps)


LAYERNORM_BACKWARD_BAD = _bad_backward_cases(
    (2, 3), LinearCache(np.ones((2, 3)), np.ones((4, 3)), True)
)


@pytest.mark.parametrize(
    "case", LAYERNORM_BACKWARD_BAD, ids=list(LAYERNORM_BACKWARD_BAD)
)
def test_layernorm_backward_bad_inputs(backend, case):
    _, cache = backend.layernorm_forward(*_ln_args())
    make, error = LAYERNORM_BACKWARD_BAD[case]
    with pytest.raises(error):
        backend.layernorm_backward(*make(cache))


def _ffn_args(**over: Any) -> tuple:
    # C = 3, F = 5
    args = {
        "x": np.ones((2, 3)),
        "w_fc": np.ones((5, 3)),
        "b_fc": np.ones(5),
        "w_proj": np.ones((3, 5)),
        "b_proj": np.ones(3),
    }
    args.update(over)
    return tuple(args[k] for k in ("x", "w_fc", "b_fc", "w_proj", "b_proj"))


FFN_BAD = {
    "x_none": (_ffn_args(x=None), DTypeError),
    "x_int": (_ffn_args(x=np.ones((2, 3), dtype=np.int64)), DTypeError),
    "b_fc_int": (_ffn_args(b_fc=np.ones(5, dtype=np.int64)), DTypeError),
    "mixed_w_proj32": (_ffn_args(w_proj=np.ones((3, 5), dtype=np.float32)), DTypeError),
    "mixed_b_proj32": (_ffn_args(b_proj=np.ones(3, dtype=np.float32)), DTypeError),
    "x_rank0": (_ffn_args(x=np.array(1.0)), ShapeError),
    "w_fc_in_out_layout": (_ffn_args(w_fc=np.ones((3, 5))), ShapeError),
    "w_proj_in_out_layout": (_ffn_args(w_proj=np.ones((5, 3))), ShapeError),
    "w_proj_other_out": (
        _ffn_args(w_proj=np.ones((4, 5)), b_proj=np.ones(4)),
        ShapeError,
    ),
    "b_fc_size": (_ffn_args(b_fc=np.ones(3)), ShapeError),
    "b_proj_size": (_ffn_args(b_proj=np.ones(5)), ShapeError),
    "x_no_rows": (_ffn_args(x=np.ones((0, 3))), EmptyInputError),
    "hidden_zero": (
        _ffn_args(w_fc=np.ones((0, 3)), b_fc=np.ones(0), w_proj=np.ones((3, 0))),
        EmptyInputError,
    ),
}


@pytest.mark.parametrize("case", FFN_BAD, ids=list(FFN_BAD))
def test_ffn_bad_inputs(backend, case):
    args, error = FFN_BAD[case]
    with pytest.raises(error):
        backend.ffn_forward(*args)


@pytest.mark.parametrize("activation", ["GELU", "silu", None, "tanh"])
def test_ffn_unknown_activation(backend, activation):
    with pytest.raises(ConfigError):
        backend.ffn_forward(*_ffn_args(), activation=activation)


FFN_BACKWARD_BAD = _bad_backward_cases(
    (2, 3), LinearCache(np.ones((2, 3)), np.ones((3, 3)), True)
)


@pytest.mark.parametrize("case", FFN_BACKWARD_BAD, ids=list(FFN_BACKWARD_BAD))
def test_ffn_backward_bad_inputs(backend, case):
    _, cache = backend.ffn_forward(*_ffn_args())
    make, error = FFN_BACKWARD_BAD[case]
    with pytest.raises(error):
        backend.ffn_backward(*make(cache))


def test_ffn_backward_rejects_hidden_sized_dy(backend):
    _, cache = backend.ffn_forward(*_ffn_args())
    with pytest.raises(ShapeError):
        backend.ffn_backward(np.ones((2, 5)), cache)  # (..., F) instead of (..., C)
