"""Conformance of the optimizers' properties that hold whatever the values.

Spec: ``cllm_spec.optim``. lr 0 and zero gradients leave the params unchanged,
RMSprop's momentum 0 is its plain update; and every step is deterministic and
pure (inputs unchanged, outputs new arrays), keeps its state's type, dtype and
step count, gives strided inputs the same bits, and starts from zero state.
"""

from __future__ import annotations

import numpy as np
import pytest

from conformance.optim_helpers import CONFIGS, INIT, KINDS, arrays_of, draw, run
from conformance.strategies import normal


# ------------------------------------------------- math properties -----
@pytest.mark.parametrize("config", CONFIGS)
def test_lr_zero_leaves_params_unchanged_bitwise(backend, dtype, rng, check, config):
    # Every update is p - 0 * (finite) = p; AdamW's decay factor is 1 - 0 * wd = 1.
    kind, hyper = CONFIGS[config]
    p0, grads = draw(rng, 33, dtype, steps=3)
    traj, state = run(backend, kind, p0, grads, INIT[kind](p0), {**hyper, "lr": 0.0})
    for p in traj:
        check.exact(p, p0, output=f"{kind}/params")
    assert state.step == 3


@pytest.mark.parametrize(
    "config", ["sgd", "sgd-momentum", "sgd-dampening", "sgd-nesterov"]
)
def test_sgd_zero_gradient_without_decay_leaves_params_unchanged(
    backend, dtype, rng, check, config
):
    kind, hyper = CONFIGS[config]
    p0 = normal(rng, (17,), dtype)
    zero = np.zeros(17, dtype)
    traj, _ = run(backend, kind, p0, [zero] * 3, INIT[kind](p0), hyper)
    for p in traj:
        check.exact(p, p0, output="sgd/params")


def test_rmsprop_momentum_zero_equals_plain(backend, dtype, rng, check):
    # momentum = 0 is the plain update (the buffer is not used at all).
    p0, grads = draw(rng, 16, dtype, steps=5)
    a, _ = run(backend, "rmsprop", p0, grads, INIT["rmsprop"](p0), {"momentum": 0.0})
    b, _ = run(backend, "rmsprop", p0, grads, INIT["rmsprop"](p0), {})
    check.exact(a[-1], b[-1], output="rmsprop/params")


# ------------------------------------------ determinism, purity, state -----
@pytest.mark.parametrize("config", CONFIGS)
def test_deterministic(backend, dtype, rng, check, config):
    kind, hyper = CONFIGS[config]
    p0, grads = draw(rng, 65, dtype, steps=3)
    a, sa = run(backend, kind, p0, grads, INIT[kind](p0), hyper)
    b, sb = run(backend, kind, p0, grads, INIT[kind](p0), hyper)
    for x, y in zip(a + arrays_of(sa), b + arrays_of(sb), strict=True):
        check.exact(x, y, output=f"{kind}/determinism")


@pytest.mark.parametrize("config", CONFIGS)
def test_inputs_not_mutated(backend, dtype, rng, check, config):
    kind, hyper = CONFIGS[config]
    step = getattr(backend, f"{kind}_step")
    p, grads = draw(rng, 31, dtype, steps=3)
    state = INIT[kind](p)
    for g in grads:  # later steps see non-zero state arrays
        before = [x.copy() for x in (p, g, *arrays_of(state))]
        new_p, new_state = step(p, g, state, **hyper)
        for x, y in zip((p, g, *arrays_of(state)), before, strict=True):
            check.exact(x, y, output=f"{kind}/input")
        p, state = new_p, new_state


@pytest.mark.parametrize("config", CONFIGS)
def test_outputs_are_new_arrays(backend, rng, config):
    kind, hyper = CONFIGS[config]
    step = getattr(backend, f"{kind}_step")
    p, grads = draw(rng, 15, np.dtype(backend.dtypes[0]), steps=2)
    state = INIT[kind](p)
    for g in grads:
        inputs = (p, g, *arrays_of(state))
        new_p, new_state = step(p, g, state, **hyper)
        outputs = (new_p, *arrays_of(new_state))
        for i, out in enumerate(outputs):
            assert not any(np.shares_memory(out, x) for x in inputs), i
            assert not any(np.shares_memory(out, o) for o in outputs[i + 1 :]), i
        p, state = new_p, new_state


@pytest.mark.parametrize("kind", KINDS)
def test_state_type_dtype_and_step_count(backend, dtype, rng, kind):
    hyper = {"lr": 0.1} if kind == "sgd" else {}
    p, grads = draw(rng, 7, dtype, steps=4)
    state = INIT[kind](p)
    for i, g in enumerate(grads, start=1):
        p, state = getattr(backend, f"{kind}_step")(p, g, state, **hyper)
        assert type(state) is type(INIT[kind](p))
        assert type(state.step) is int and state.step == i
        assert p.dtype == dtype and p.shape == (7,)
        for arr in arrays_of(state):
            assert arr.dtype == dtype and arr.shape == (7,)


@pytest.mark.parametrize("kind", KINDS)
def test_strided_inputs_give_the_same_bits(backend, dtype, rng, check, kind):
    hyper = CONFIGS[f"{kind}-defaults"][1] if kind != "sgd" else {"lr": 0.1}
    p, grads = draw(rng, 17, dtype, steps=2)
    p1, s1 = run(backend, kind, p, grads, INIT[kind](p), hyper)
    wide = [np.repeat(x, 2)[::2] for x in (p, *grads)]  # strided views, same values
    assert not wide[0].flags.c_contiguous
    p2, s2 = run(backend, kind, wide[0], wide[1:], INIT[kind](p), hyper)
    check.exact(p1[-1], p2[-1], output=f"{kind}/params")
    for a, b in zip(arrays_of(s1), arrays_of(s2), strict=True):
        check.exact(a, b, output=f"{kind}/state")


@pytest.mark.parametrize("kind", KINDS)
def test_init_state_is_zeros_like_params(kind):
    for dt in (np.float32, np.float64):
        p = np.arange(5, dtype=dt)
        state = INIT[kind](p)
        assert state.step == 0
        for arr in arrays_of(state):
            assert arr.dtype == dt and arr.shape == (5,) and not np.any(arr)
            assert not np.shares_memory(arr, p)
