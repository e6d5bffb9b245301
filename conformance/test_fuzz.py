"""Every entry point of the Backend protocol under malformed arguments.

Each function of ``cllm_spec.protocols.COMPONENT_FUNCTIONS`` is called with a
valid call in which Hypothesis replaces one argument, keyword or cache field
(possibly nested) by something hostile: a wrong type, a wrong dtype (ints,
bools, complex, float16, object), a wrong rank or shape, an empty or 0-d array,
NaN and inf, huge and negative ints (2**63, 2**64, -2**63 - 1), huge or
non-finite floats, another cache type. The call must succeed or raise a
:class:`~cllm_spec.errors.CllmError`; any other exception (AttributeError,
IndexError, OverflowError, a bare TypeError ...) or a crash fails.

The ``ci`` profile (``CLLM_HYPOTHESIS_PROFILE=ci``, derandomized) runs a few
examples per entry point in seconds; ``tox -e fuzz-backends`` runs many more.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cllm_spec.errors import CllmError
from cllm_spec.protocols import COMPONENT_FUNCTIONS, KVCache

EXAMPLES = int(os.environ.get("CLLM_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
F32 = np.float32


class Call(NamedTuple):
    args: list[Any]
    kwargs: dict[str, Any]


def _rng() -> np.random.Generator:
    return np.random.default_rng(7)


def _f(*shape: int) -> np.ndarray:
    return _rng().standard_normal(shape).astype(F32)


# ------------------------------------------------------------ valid calls ---
def _forward(b: Any, name: str) -> Callable[[], Any]:
    return lambda: getattr(b, name)(*GOOD[name](b).args, **GOOD[name](b).kwargs)


def _backward(b: Any, forward: str, cache_at: int = 1) -> Call:
    out = getattr(b, forward)(*GOOD[forward](b).args, **GOOD[forward](b).kwargs)
    y = out[0]
    dy = np.ones_like(y)
    return Call([dy, out[cache_at]], {})


def _mha_args() -> list[Any]:
    return [_f(2, 3, 6), _f(18, 6), _f(18), _f(6, 6), _f(6)]


def _ffn_args() -> list[Any]:
    return [_f(2, 3, 4), _f(8, 4), _f(8), _f(4, 8), _f(4)]


GOOD: dict[str, Callable[[Any], Call]] = {
    "make_batch_queue": lambda b: Call([3], {}),
    "make_batch_pool": lambda b: Call([2, 2, 3], {}),
    "softmax_forward": lambda b: Call([_f(2, 5)], {}),
    "softmax_backward": lambda b: _backward(b, "softmax_forward"),
    "log_softmax_forward": lambda b: Call([_f(2, 5)], {}),
    "log_softmax_backward": lambda b: _backward(b, "log_softmax_forward"),
    "cross_entropy_forward": lambda b: Call(
        [_f(4, 5), np.array([0, 4, -100, 2])],
        {"ignore_index": -100, "label_smoothing": 0.1, "reduction": "mean"},
    ),
    "cross_entropy_backward": lambda b: _backward(b, "cross_entropy_forward"),
    "mse_forward": lambda b: Call([_f(3, 4), _f(3, 4)], {"reduction": "mean"}),
    "mse_backward": lambda b: _backward(b, "mse_forward"),
    "l1_forward": lambda b: Call([_f(3, 4), _f(3, 4)], {"reduction": "sum"}),
    "l1_backward": lambda b: _backward(b, "l1_forward"),
    "huber_forward": lambda b: Call(
        [_f(3, 4), _f(3, 4)], {"delta": 1.0, "reduction": "none"}
    ),
    "huber_backward": lambda b: _backward(b, "huber_forward"),
    "grad_global_norm": lambda b: Call([_f(7)], {"norm_type": 2.0}),
    "clip_grad_norm": lambda b: Call([_f(7), 1.0], {"norm_type": 2.0}),
    "clip_grad_value": lambda b: Call([_f(7), 0.5], {}),
    "grad_stats": lambda b: Call([_f(7)], {}),
    "grad_accumulate": lambda b: Call([_f(7), _f(7)], {}),
    "grad_scale": lambda b: Call([_f(7), 0.5], {}),
    "grad_tree_reduce": lambda b: Call([[_f(7), _f(7), _f(7)]], {}),
    "sgd_step": lambda b: Call(
        [_f(5), _f(5), b_state(b, "sgd")],
        {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01, "nesterov": True},
    ),
    "adam_step": lambda b: Call(
        [_f(5), _f(5), b_state(b, "adam")], {"lr": 1e-3, "betas": (0.9, 0.999)}
    ),
    "adamw_step": lambda b: Call(
        [_f(5), _f(5), b_state(b, "adam")], {"amsgrad": True, "eps": 1e-8}
    ),
    "rmsprop_step": lambda b: Call(
        [_f(5), _f(5), b_state(b, "rmsprop")], {"centered": True, "momentum": 0.5}
    ),
    "adagrad_step": lambda b: Call(
        [_f(5), _f(5), b_state(b, "adagrad")], {"lr_decay": 0.1}
    ),
    "attention_forward": lambda b: Call(
        [_f(1, 2, 3, 4), _f(1, 2, 3, 4), _f(1, 2, 3, 4)],
        {"causal": True, "key_padding_mask": np.ones((1, 3), bool)},
    ),
    "attention_backward": lambda b: _backward(b, "attention_forward"),
    "kv_cache_new": lambda b: Call([1, 2, 4, 3, np.float32], {}),
    "kv_cache_append": lambda b: Call(
        [b.kv_cache_new(1, 2, 4, 3, np.float32), _f(1, 2, 1, 3), _f(1, 2, 1, 3)], {}
    ),
    "kv_cache_reset": lambda b: Call([b.kv_cache_new(1, 2, 4, 3, np.float32)], {}),
    "mha_forward": lambda b: Call(
        _mha_args(), {"n_head": 2, "kv_cache": b.kv_cache_new(2, 2, 5, 3, F32)}
    ),
    "mha_backward": lambda b: Call(
        [np.ones((2, 3, 6), F32), b.mha_forward(*_mha_args(), n_head=2)[1]], {}
    ),
    "linear_forward": lambda b: Call([_f(2, 3), _f(4, 3), _f(4)], {}),
    "linear_backward": lambda b: _backward(b, "linear_forward"),
    "activation_forward": lambda b: Call([_f(2, 3)], {"kind": "gelu"}),
    "activation_backward": lambda b: _backward(b, "activation_forward"),
    "layernorm_forward": lambda b: Call([_f(2, 4), _f(4), _f(4)], {"eps": 1e-5}),
    "layernorm_backward": lambda b: _backward(b, "layernorm_forward"),
    "ffn_forward": lambda b: Call(_ffn_args(), {"activation": "gelu_tanh"}),
    "ffn_backward": lambda b: _backward(b, "ffn_forward"),
    "embedding_forward": lambda b: Call(
        [np.array([[0, 3], [2, 1]]), _f(5, 4), _f(3, 4)], {"pos_offset": 1}
    ),
    "embedding_backward": lambda b: _backward(b, "embedding_forward"),
}


def b_state(b: Any, kind: str) -> Any:
    from cllm_spec import optim

    p = _f(5)
    return {
        "sgd": optim.init_sgd_state,
        "adam": optim.init_adam_state,
        "rmsprop": optim.init_rmsprop_state,
        "adagrad": optim.init_adagrad_state,
    }[kind](p)


ENTRY_POINTS = [name for names in COMPONENT_FUNCTIONS.values() for name in names]


def test_every_entry_point_has_a_valid_call(backend):
    assert sorted(GOOD) == sorted(ENTRY_POINTS)
    for name in ENTRY_POINTS:
        call = GOOD[name](backend)
        getattr(backend, name)(*call.args, **call.kwargs)  # valid: must not raise


# ----------------------------------------------------------- bad values ----
class Foreign(NamedTuple):
    a: Any
    b: Any


HUGE_INTS = [2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, -1]
SCALARS = [
    None,
    True,
    0,
    -0.0,
    1e308,
    1e-320,
    math.nan,
    math.inf,
    -math.inf,
    "mean",
    "",
    b"x",
    1j,
    np.float16(1.0),
    np.int8(3),
    (),
    [],
    {},
    object(),
    Foreign(1, 2),
    KVCache(None, None, 0),
    *HUGE_INTS,
]
DTYPES = [
    np.int8,
    np.int32,
    np.int64,
    np.uint64,
    np.bool_,
    np.float16,
    np.float32,
    np.float64,
    np.complex64,
    object,
]


@st.composite
def bad_arrays(draw: st.DrawFn, like: Any = None) -> np.ndarray:
    """An array that is wrong in one or more ways, often close to ``like``."""
    if isinstance(like, np.ndarray) and draw(st.booleans()):
        shape = list(like.shape)
        how = draw(st.sampled_from(["dtype", "shape", "value", "empty", "layout"]))
        if how == "dtype":
            return np.zeros(shape, draw(st.sampled_from(DTYPES)))
        if how == "shape":
            if shape and draw(st.booleans()):
                shape[draw(st.integers(0, len(shape) - 1))] += draw(
                    st.sampled_from([-1, 1, 5])
                )
            else:
                shape = shape + [1] if draw(st.booleans()) else shape[:-1]
            return np.zeros([max(0, s) for s in shape], like.dtype)
        if how == "empty":
            return np.zeros([0, *shape[1:]], like.dtype)
        if how == "layout":
            wide = np.zeros([*shape[:-1], 2 * shape[-1]] if shape else [2], like.dtype)
            return wide[..., ::2] if shape else wide[:1].reshape(())
        arr = like.copy()
        if arr.size and arr.dtype.kind in "fc":
            arr.reshape(-1)[0] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        elif arr.size and arr.dtype.kind in "iu":
            info = np.iinfo(arr.dtype)
            arr.reshape(-1)[0] = draw(st.sampled_from([info.min, info.max, -1]))
        return arr
    rank = draw(st.integers(0, 4))
    shape = draw(st.lists(st.integers(0, 3), min_size=rank, max_size=rank))
    return np.zeros(shape, draw(st.sampled_from(DTYPES)))


@st.composite
def corrupt(draw: st.DrawFn, value: Any, depth: int = 0) -> Any:
    """``value`` with one part replaced by something hostile."""
    if isinstance(value, tuple) and hasattr(value, "_fields") and depth < 3:
        if draw(st.integers(0, 3)) > 0:  # mostly a field, sometimes the cache
            field = draw(st.sampled_from(value._fields))
            new = draw(corrupt(getattr(value, field), depth + 1))
            return value._replace(**{field: new})
    if isinstance(value, list) and value and depth < 3 and draw(st.booleans()):
        i = draw(st.integers(0, len(value) - 1))
        return [*value[:i], draw(corrupt(value[i], depth + 1)), *value[i + 1 :]]
    choice = draw(st.integers(0, 2))
    if choice == 0:
        return draw(st.sampled_from(SCALARS))
    if choice == 1:
        return draw(bad_arrays(value))
    return draw(
        st.one_of(
            st.integers(-(2**70), 2**70),
            st.floats(allow_nan=True, allow_infinity=True),
            st.text(max_size=3),
        )
    )


@st.composite
def bad_calls(draw: st.DrawFn, good: Call) -> Call:
    args, kwargs = list(good.args), dict(good.kwargs)
    slots = [("a", i) for i in range(len(args))] + [("k", k) for k in kwargs]
    for _ in range(draw(st.integers(1, 2))):
        kind, key = draw(st.sampled_from(slots))
        if kind == "a":
            args[key] = draw(corrupt(args[key]))
        else:
            kwargs[key] = draw(corrupt(kwargs[key]))
    return Call(args, kwargs)


def expect_typed(fn: Callable[..., Any], call: Call) -> Any:
    """Run the call; anything raised must be one of the spec's errors."""
    try:
        return fn(*call.args, **call.kwargs)
    except CllmError:
        return None
    except Exception as exc:  # the point of the test: name what escaped
        raise AssertionError(
            f"{type(exc).__name__} instead of a spec error: {exc!r}"
        ) from exc


@pytest.mark.parametrize("name", ENTRY_POINTS)
@FUZZ
@given(data=st.data())
def test_malformed_calls_raise_only_spec_errors(backend, name, data):
    call = data.draw(bad_calls(GOOD[name](backend)), label="call")
    expect_typed(getattr(backend, name), call)


# ------------------------------------------- queue and pool methods --------
TIMEOUTS = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
    st.sampled_from(SCALARS),
)


@FUZZ
@given(timeout=TIMEOUTS, item=st.sampled_from([1, "x", None, (), np.zeros(2)]))
def test_queue_methods_raise_only_spec_errors(backend, timeout, item):
    q = backend.make_batch_queue(2)
    q.put("first", timeout=1.0)
    # never blocks for long: a put has room, a get has an item
    expect_typed(q.put, Call([item], {"timeout": timeout}))
    got = expect_typed(q.get, Call([], {"timeout": timeout}))
    assert got in (None, "first")
    expect_typed(q.try_put, Call([item], {}))


@FUZZ
@given(timeout=TIMEOUTS, other=st.sampled_from(SCALARS))
def test_pool_methods_raise_only_spec_errors(backend, timeout, other):
    pool = backend.make_batch_pool(2, 1, 2)
    handle = expect_typed(pool.acquire, Call([], {"timeout": timeout}))
    for method in (pool.retain, pool.release, pool.refcount):
        expect_typed(method, Call([other], {}))
    if handle is not None:
        pool.release(handle)
    assert pool.available == 2
