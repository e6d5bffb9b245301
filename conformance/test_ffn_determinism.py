"""Conformance of the feed-forward functions as pure functions.

Spec: ``cllm_spec.ffn``. For linear, layer norm, the block and each activation:
repeated calls are bitwise identical, inputs and caches are left unchanged and
outputs alias no input; a NaN stays in its row, and strided views give the
values of their contiguous copies.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from conformance.ffn_helpers import KINDS, ffn_inputs, linear_inputs
from conformance.strategies import as_oracle, normal


# ======================================================== special values =====
def test_nan_stays_in_its_row(backend, dtype, rng):
    x = normal(rng, (3, 8), dtype)
    x[1, 2] = np.nan
    w, b = normal(rng, (5, 8), dtype), normal(rng, (5,), dtype)
    y, _ = backend.linear_forward(x, w, b)
    assert np.all(np.isnan(y[1])) and np.all(np.isfinite(y[[0, 2]]))
    ones, zeros = np.ones(8, dtype=dtype), np.zeros(8, dtype=dtype)
    z, _ = backend.layernorm_forward(x, ones, zeros)
    assert np.all(np.isnan(z[1])) and np.all(np.isfinite(z[[0, 2]]))
    args = ffn_inputs(rng, (), 8, 16, dtype)
    u, _ = backend.ffn_forward(x, *args[1:])
    assert np.all(np.isnan(u[1])) and np.all(np.isfinite(u[[0, 2]]))


def test_noncontiguous_inputs(backend, dtype, oracle, rng, check):
    # strided views are accepted and give the values of their contiguous copies
    big = normal(rng, (6, 34), dtype)
    x = big[::2, ::2]  # (3, 17), non-contiguous
    w = normal(rng, (17, 9), dtype).T  # (9, 17), Fortran order
    b = normal(rng, (18,), dtype)[::2]
    assert not x.flags.c_contiguous and not w.flags.c_contiguous
    y, _ = backend.linear_forward(x, w, b)
    ref, _ = oracle.linear_forward(*as_oracle(x, w, b))
    check.close(y, ref, output="linear", dtype=dtype)
    weight, bias = normal(rng, (34,), dtype)[::2], normal(rng, (34,), dtype)[1::2]
    z, _ = backend.layernorm_forward(x, weight, bias)
    rz, _ = oracle.layernorm_forward(*as_oracle(x, weight, bias))
    check.close(z, rz, output="layernorm", dtype=dtype)
    a, _ = backend.activation_forward(x, "gelu")
    ra, _ = oracle.activation_forward(x.astype(np.float64), "gelu")
    check.close(a, ra, output="activation", dtype=dtype)


# ================================== determinism, mutation, fresh outputs =====
def _calls(backend: Any, rng: np.random.Generator, dtype: Any) -> dict[str, tuple]:
    """name -> (forward, backward, inputs, dy) for every function pair."""
    x = normal(rng, (3, 4, 16), dtype)
    lin = linear_inputs(rng, (3, 4), 16, 17, dtype)
    ffn = ffn_inputs(rng, (3, 4), 16, 33, dtype)
    weight, bias = normal(rng, (16,), dtype), normal(rng, (16,), dtype)
    calls: dict[str, tuple] = {
        "linear": (backend.linear_forward, backend.linear_backward, list(lin),
                   normal(rng, (3, 4, 17), dtype)),
        "layernorm": (backend.layernorm_forward, backend.layernorm_backward,
                      [x, weight, bias], normal(rng, (3, 4, 16), dtype)),
        "ffn": (backend.ffn_forward, backend.ffn_backward, ffn,
                normal(rng, (3, 4, 16), dtype)),
    }  # fmt: skip
    for kind in KINDS:

        def fwd(x_: np.ndarray, _kind: str = kind) -> Any:
            return backend.activation_forward(x_, _kind)

        calls[kind] = (
            fwd,
            backend.activation_backward,
            [x],
            normal(rng, x.shape, dtype),
        )
    return calls


CALL_NAMES = ("linear", "layernorm", "ffn", *KINDS)


def _flat(values: Any) -> list[np.ndarray]:
    """Every array in an output, a gradient tuple or a (nested) cache."""
    if isinstance(values, np.ndarray):
        return [values]
    if isinstance(values, tuple):
        return [a for v in values for a in _flat(v)]
    return []


@pytest.mark.parametrize("name", CALL_NAMES)
def test_forward_is_deterministic(backend, dtype, rng, check, name):
    forward, _, inputs, _ = _calls(backend, rng, dtype)[name]
    first, _ = forward(*inputs)
    second, _ = forward(*inputs)
    check.exact(second, first, output=name)


@pytest.mark.parametrize("name", CALL_NAMES)
def test_backward_is_deterministic(backend, dtype, rng, check, name):
    forward, backward, inputs, dy = _calls(backend, rng, dtype)[name]
    _, cache = forward(*inputs)
    first, second = _flat(backward(dy, cache)), _flat(backward(dy, cache))
    assert len(first) == len(second) > 0
    for a, b in zip(first, second, strict=True):
        check.exact(b, a, output=f"{name}.grad")


@pytest.mark.parametrize("name", CALL_NAMES)
def test_inputs_not_mutated(backend, dtype, rng, check, name):
    forward, backward, inputs, dy = _calls(backend, rng, dtype)[name]
    saved = [a.copy() for a in inputs]
    saved_dy = dy.copy()
    _, cache = forward(*inputs)
    cache_arrays = [a.copy() for a in _flat(cache)]
    backward(dy, cache)
    for before, after in zip(saved, inputs, strict=True):
        check.exact(after, before, output=f"{name}.input")
    check.exact(dy, saved_dy, output=f"{name}.dy")
    for before, after in zip(cache_arrays, _flat(cache), strict=True):
        check.exact(after, before, output=f"{name}.cache")


@pytest.mark.parametrize("name", CALL_NAMES)
def test_outputs_are_new_arrays(backend, dtype, rng, name):
    forward, backward, inputs, dy = _calls(backend, rng, dtype)[name]
    y, cache = forward(*inputs)
    grads = _flat(backward(dy, cache))
    for out in [y, *grads]:
        assert isinstance(out, np.ndarray) and out.dtype == dtype
        for arr in [*inputs, dy]:
            assert not np.shares_memory(out, arr), "an output aliases an input"
