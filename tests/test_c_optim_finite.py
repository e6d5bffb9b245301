"""The C backend's float32 optimizer steps refuse NaN and inf in the kernel.

The wrapper leaves the spec validator's finite scans out for float32 and the
step kernel scans each block of every input after reading it (csrc/optim.c);
a refusal becomes the spec's error from the full validation. These tests put
one bad value into each input at the edges of the kernel's 16384-element
blocks, on 1 and 2 threads, and check the error names that input, the inputs
are left as they were, and large finite values pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

cllm_c = pytest.importorskip("cllm_c", reason="the C extension is not built")

from cllm_spec.errors import NonFiniteError  # noqa: E402
from cllm_spec.optim import (  # noqa: E402
    init_adagrad_state,
    init_adam_state,
    init_rmsprop_state,
    init_sgd_state,
)

F32 = np.float32
BLOCK = 16384
N = 3 * BLOCK + 5
#: optimizer -> (step, state maker, hyperparameters that use every state field)
STEPS: dict[str, tuple[Callable[..., Any], Callable[..., Any], dict[str, Any]]] = {
    "sgd": (cllm_c.sgd_step, init_sgd_state, {"lr": 0.1, "momentum": 0.9}),
    "adam": (cllm_c.adam_step, init_adam_state, {"amsgrad": True}),
    "adamw": (cllm_c.adamw_step, init_adam_state, {}),
    "rmsprop": (cllm_c.rmsprop_step, init_rmsprop_state, {"centered": True}),
    "adagrad": (cllm_c.adagrad_step, init_adagrad_state, {}),
}
POSITIONS = (0, BLOCK - 1, BLOCK, N - 1)


@pytest.fixture(params=(1, 2), ids=("1-thread", "2-threads"))
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    saved = cllm_c.num_threads()
    cllm_c.set_num_threads(request.param)
    yield request.param
    cllm_c.set_num_threads(saved)


def _inputs(kind: str) -> tuple[np.ndarray, np.ndarray, Any]:
    rng = np.random.default_rng(0)
    p = rng.standard_normal(N).astype(F32)
    g = rng.standard_normal(N).astype(F32)
    step, init, hyper = STEPS[kind]
    state = init(p)
    # one step first, so every state buffer holds ordinary non-zero values
    _, state = step(p, g, state, **hyper)
    return p, g, state


def _arrays(p: np.ndarray, g: np.ndarray, state: Any) -> dict[str, np.ndarray]:
    named = {"params": p, "grads": g}
    named.update({f"state.{f}": getattr(state, f) for f in state._fields[:-1]})
    return named


@pytest.mark.parametrize("kind", STEPS)
@pytest.mark.parametrize("bad", (np.nan, np.inf, -np.inf), ids=("nan", "inf", "-inf"))
def test_a_bad_value_in_any_input_is_refused_by_name(kind, bad, threads):
    p, g, state = _inputs(kind)
    step, _, hyper = STEPS[kind]
    for name in _arrays(p, g, state):
        for at in POSITIONS:
            p2, g2 = p.copy(), g.copy()
            state2 = state._replace(
                **{f: getattr(state, f).copy() for f in state._fields[:-1]}
            )
            arrays = _arrays(p2, g2, state2)
            arrays[name][at] = bad
            before = {k: v.copy() for k, v in arrays.items()}
            with pytest.raises(NonFiniteError, match=rf"^{name}: 1 non-finite"):
                step(p2, g2, state2, **hyper)
            for k, v in arrays.items():  # nothing was written over
                np.testing.assert_array_equal(v, before[k], err_msg=k)


@pytest.mark.parametrize("kind", STEPS)
def test_large_finite_values_are_not_refused(kind, threads):
    p, g, state = _inputs(kind)
    step, _, hyper = STEPS[kind]
    big = np.finfo(F32).max
    g = g.copy()
    g[[0, BLOCK, N - 1]] = (big, -big, np.finfo(F32).tiny)
    p_out, _ = step(p, g, state, **hyper)
    assert p_out.shape == p.shape
