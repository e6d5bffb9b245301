"""Conformance of the optimizers (``cllm_spec.optim``): SGD, Adam, AdamW, RMSprop,
Adagrad.

Three references: the float64 NumPy oracle; an independent scalar reference in
this file (plain Python floats, one element and one step at a time, written from
the formulas of the spec docstring); and golden values derived by hand below.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cllm_spec import optim as spec
from cllm_spec.errors import (
    ConfigError,
    DTypeError,
    EmptyInputError,
    NonFiniteError,
    ShapeError,
)
from cllm_spec.tolerances import Tolerance
from conformance.strategies import EDGE_SIZES, normal

STEPS = 25
F64 = np.dtype(np.float64)
# For values written as rounded decimals ("moves by lr * sign(g) up to eps"): the
# exact closed form is checked with the table tolerance next to each of them.
ROUNDED = Tolerance(
    rtol=1e-6, atol=0.0, why="a decimal rounded to 7 digits, or exact up to eps/|g|"
)

INIT: dict[str, Callable[[np.ndarray], Any]] = {
    "sgd": spec.init_sgd_state,
    "adam": spec.init_adam_state,
    "adamw": spec.init_adam_state,
    "rmsprop": spec.init_rmsprop_state,
    "adagrad": spec.init_adagrad_state,
}
KINDS = tuple(INIT)

#: name -> (optimizer, hyperparameters). Empty dicts check the backend's defaults.
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "sgd": ("sgd", {"lr": 0.1}),
    "sgd-momentum": ("sgd", {"lr": 0.05, "momentum": 0.9}),
    "sgd-dampening": ("sgd", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3}),
    "sgd-nesterov": ("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    "sgd-weight-decay": ("sgd", {"lr": 0.05, "weight_decay": 0.1}),
    "sgd-nesterov-wd": (
        "sgd",
        {"lr": 0.05, "momentum": 0.8, "weight_decay": 0.05, "nesterov": True},
    ),
    "adam-defaults": ("adam", {}),
    "adam": ("adam", {"lr": 1e-2, "betas": (0.8, 0.95)}),
    "adam-weight-decay": ("adam", {"lr": 1e-2, "weight_decay": 0.1}),
    "adam-amsgrad": ("adam", {"lr": 1e-2, "betas": (0.8, 0.95), "amsgrad": True}),
    "adamw-defaults": ("adamw", {}),
    "adamw": ("adamw", {"lr": 1e-2, "weight_decay": 0.1}),
    "adamw-amsgrad": ("adamw", {"lr": 1e-2, "weight_decay": 0.05, "amsgrad": True}),
    "rmsprop-defaults": ("rmsprop", {}),
    "rmsprop-centered": ("rmsprop", {"lr": 1e-2, "centered": True}),
    "rmsprop-momentum": ("rmsprop", {"lr": 1e-3, "momentum": 0.9}),
    "rmsprop-centered-momentum": (
        "rmsprop",
        {"lr": 1e-3, "alpha": 0.9, "momentum": 0.5, "centered": True},
    ),
    "rmsprop-weight-decay": ("rmsprop", {"lr": 1e-2, "weight_decay": 0.1, "eps": 1e-6}),
    "adagrad-defaults": ("adagrad", {}),
    "adagrad-decay": ("adagrad", {"lr": 0.1, "lr_decay": 0.05, "weight_decay": 0.1}),
}


# ------------------------------------------------- the scalar reference -----
# One element, one step: p, g and the state are Python floats, t is the number
# of the step being taken (1-based). The defaults are torch.optim's.
State = tuple[float, ...]


def ref_sgd(
    p: float,
    g: float,
    s: State,
    t: int,
    *,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
) -> tuple[float, State]:
    (buf,) = s
    if weight_decay != 0.0:
        g = g + weight_decay * p
    if momentum != 0.0:
        buf = g if t == 1 else momentum * buf + (1.0 - dampening) * g
        g = g + momentum * buf if nesterov else buf
    return p - lr * g, (buf,)


def ref_adam(
    p: float,
    g: float,
    s: State,
    t: int,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    decoupled: bool = False,
) -> tuple[float, State]:
    m, v, vmax = s
    b1, b2 = betas
    if decoupled:
        p = p * (1.0 - lr * weight_decay)
    elif weight_decay != 0.0:
        g = g + weight_decay * p
    m = b1 * m + (1.0 - b1) * g
    v = b2 * v + (1.0 - b2) * g * g
    if amsgrad:
        vmax = max(vmax, v)
    denom = math.sqrt(vmax if amsgrad else v) / math.sqrt(1.0 - b2**t) + eps
    return p - lr / (1.0 - b1**t) * m / denom, (m, v, vmax)


def ref_adamw(
    p: float, g: float, s: State, t: int, *, weight_decay: float = 1e-2, **kw: Any
) -> tuple[float, State]:
    return ref_adam(p, g, s, t, weight_decay=weight_decay, decoupled=True, **kw)


def ref_rmsprop(
    p: float,
    g: float,
    s: State,
    t: int,
    *,
    lr: float = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
) -> tuple[float, State]:
    sq, buf, ga = s
    if weight_decay != 0.0:
        g = g + weight_decay * p
    sq = alpha * sq + (1.0 - alpha) * g * g
    if centered:
        ga = alpha * ga + (1.0 - alpha) * g
        avg = math.sqrt(sq - ga * ga) + eps
    else:
        avg = math.sqrt(sq) + eps
    if momentum > 0.0:
        buf = momentum * buf + g / avg
        return p - lr * buf, (sq, buf, ga)
    return p - lr * g / avg, (sq, buf, ga)


def ref_adagrad(
    p: float,
    g: float,
    s: State,
    t: int,
    *,
    lr: float = 1e-2,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    eps: float = 1e-10,
) -> tuple[float, State]:
    (acc,) = s
    if weight_decay != 0.0:
        g = g + weight_decay * p
    clr = lr / (1.0 + (t - 1) * lr_decay)
    acc = acc + g * g
    return p - clr * g / (math.sqrt(acc) + eps), (acc,)


REF = {
    "sgd": ref_sgd,
    "adam": ref_adam,
    "adamw": ref_adamw,
    "rmsprop": ref_rmsprop,
    "adagrad": ref_adagrad,
}


def ref_run(
    kind: str,
    p0: np.ndarray,
    grads: list[np.ndarray],
    state0: Any,
    hyper: dict[str, Any],
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The scalar reference over a trajectory: per-step params, final state arrays."""
    fn = REF[kind]
    ps = [float(x) for x in p0]
    arrays = [getattr(state0, f) for f in state0._fields[:-1]]
    states = [tuple(float(a[i]) for a in arrays) for i in range(len(ps))]
    trajectory = []
    for t, g in enumerate(grads, start=state0.step + 1):
        out = [
            fn(p, float(gi), s, t, **hyper)
            for p, gi, s in zip(ps, g, states, strict=True)
        ]
        ps, states = [o[0] for o in out], [o[1] for o in out]
        trajectory.append(np.array(ps))
    return trajectory, [np.array(col) for col in zip(*states, strict=True)]


# ------------------------------------------------------------- helpers -----
def run(
    backend: Any,
    kind: str,
    p: np.ndarray,
    grads: list[np.ndarray],
    state: Any,
    hyper: dict[str, Any],
) -> tuple[list[np.ndarray], Any]:
    """Steps ``backend`` through ``grads``; returns per-step params, final state."""
    step = getattr(backend, f"{kind}_step")
    trajectory = []
    for g in grads:
        p, state = step(p, g, state, **hyper)
        trajectory.append(p)
    return trajectory, state


def draw(
    rng: np.random.Generator, size: int, dtype: Any, steps: int = STEPS
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Params and per-step gradients whose scale changes from step to step."""
    p0 = normal(rng, (size,), dtype)
    scales = rng.uniform(0.1, 3.0, steps)
    return p0, [normal(rng, (size,), dtype, scale=s) for s in scales]


def arrays_of(state: Any) -> list[np.ndarray]:
    return [getattr(state, f) for f in state._fields[:-1]]


def f64(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64)


def one_step(
    backend: Any, kind: str, p: np.ndarray, g: np.ndarray, **hyper: Any
) -> tuple[np.ndarray, Any]:
    return getattr(backend, f"{kind}_step")(p, g, INIT[kind](p), **hyper)


# ----------------------------------------------- trajectories vs oracles -----
@pytest.mark.parametrize("config", CONFIGS)
def test_trajectory_matches_oracle_and_scalar_reference(
    backend, dtype, oracle, rng, check, config
):
    kind, hyper = CONFIGS[config]
    for size in EDGE_SIZES:
        p0, grads = draw(rng, size, dtype)
        traj, state = run(backend, kind, p0, grads, INIT[kind](p0), hyper)
        o_p0, o_grads = f64(p0), [f64(g) for g in grads]
        o_traj, o_state = run(oracle, kind, o_p0, o_grads, INIT[kind](o_p0), hyper)
        r_traj, r_arrays = ref_run(kind, o_p0, o_grads, INIT[kind](o_p0), hyper)
        # (STEPS, P): every step's params, so a wrong step anywhere shows up
        traj, o_traj, r_traj = np.stack(traj), np.stack(o_traj), np.stack(r_traj)
        check.close(traj, o_traj, output=f"{kind}/params", dtype=dtype)
        check.close(traj, r_traj, output=f"{kind}/params", dtype=dtype)
        fields = state._fields[:-1]
        for field, a, o, r in zip(
            fields, arrays_of(state), arrays_of(o_state), r_arrays, strict=True
        ):
            check.close(a, o, output=f"{kind}/state.{field}", dtype=dtype)
            check.close(a, r, output=f"{kind}/state.{field}", dtype=dtype)
        assert type(state) is type(o_state)
        assert state.step == STEPS


# ----------------------------------------------------- golden: SGD -----
def test_sgd_seed_case_plain_step(backend, dtype, check):
    # Seed optimizer test 3: p - lr * g = [1 - .01, 2 - .02, 3 - .03].
    p = np.array([1.0, 2.0, 3.0], dtype)
    g = np.array([0.1, 0.2, 0.3], dtype)
    p1, _ = one_step(backend, "sgd", p, g, lr=0.1)
    check.close(p1, np.array([0.99, 1.98, 2.97]), output="sgd/params", dtype=dtype)


def test_sgd_seed_case_momentum_two_steps(backend, dtype, check):
    # Seed optimizer test 4 (lr .1, momentum .9, the same g twice). PyTorch's
    # first step sets buf = g = .1 (a copy, no dampening), so p = 1 - .01 = .99;
    # the second buf = .9 * .1 + .1 = .19 and p = .99 - .1 * .19 = .971.
    # Elementwise buf = 1.9 g and p = p0 - .29 g. The original's v = mu v + g
    # from v = 0 gives the same numbers; with dampening it would not (below).
    p = np.array([1.0, 2.0, 3.0], dtype)
    g = np.array([0.1, 0.2, 0.3], dtype)
    traj, state = run(
        backend, "sgd", p, [g, g], INIT["sgd"](p), {"lr": 0.1, "momentum": 0.9}
    )
    check.close(traj[0], [0.99, 1.98, 2.97], output="sgd/params", dtype=dtype)
    check.close(traj[1], [0.971, 1.942, 2.913], output="sgd/params", dtype=dtype)
    check.close(state.momentum_buffer, [0.19, 0.38, 0.57], output="sgd/buf")
    assert state.step == 2


def test_sgd_first_momentum_step_is_undamped(backend, dtype, check):
    # lr .1, momentum .9, dampening .5, p0 = 1, g = .1 twice. Step 1: buf = g
    # (PyTorch copies g; a zero buffer updated with (1 - d) g would give buf .05
    # and p .995), p = .99. Step 2: buf = .9 * .1 + .5 * .1 = .14, p = .99 - .014.
    p = np.array([1.0, 2.0, 3.0], dtype)
    g = np.array([0.1, 0.2, 0.3], dtype)
    hyper = {"lr": 0.1, "momentum": 0.9, "dampening": 0.5}
    traj, state = run(backend, "sgd", p, [g, g], INIT["sgd"](p), hyper)
    check.close(traj[0], [0.99, 1.98, 2.97], output="sgd/params", dtype=dtype)
    check.close(traj[1], [0.976, 1.952, 2.928], output="sgd/params", dtype=dtype)
    check.close(state.momentum_buffer, [0.14, 0.28, 0.42], output="sgd/buf")


def test_sgd_nesterov_two_steps(backend, dtype, check):
    # lr .1, momentum .9, nesterov, the same g twice. Step 1: buf = g, the step
    # uses g + .9 buf = 1.9 g, p = p0 - .19 g. Step 2: buf = .9 g + g = 1.9 g,
    # the step uses g + .9 * 1.9 g = 2.71 g, p = p0 - .19 g - .271 g = p0 - .461 g.
    p = np.array([1.0, 2.0, 3.0], dtype)
    g = np.array([0.1, 0.2, 0.3], dtype)
    hyper = {"lr": 0.1, "momentum": 0.9, "nesterov": True}
    traj, _ = run(backend, "sgd", p, [g, g], INIT["sgd"](p), hyper)
    check.close(traj[0], [0.981, 1.962, 2.943], output="sgd/params", dtype=dtype)
    check.close(traj[1], [0.9539, 1.9078, 2.8617], output="sgd/params", dtype=dtype)


def test_sgd_weight_decay_is_added_to_the_gradient(backend, dtype, check):
    # g' = g + .1 p = [.5 + .2, 0 - .4]; p = p - .1 g' = [2 - .07, -4 + .04].
    p = np.array([2.0, -4.0], dtype)
    g = np.array([0.5, 0.0], dtype)
    p1, _ = one_step(backend, "sgd", p, g, lr=0.1, weight_decay=0.1)
    check.close(p1, [1.93, -3.96], output="sgd/params", dtype=dtype)


# ---------------------------------------------------- golden: Adam -----
@pytest.mark.parametrize("kind", ["adam", "adamw"])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_adam_first_step_moves_by_lr_times_sign(backend, dtype, check, kind, amsgrad):
    # Step 1: m = (1 - b1) g, v = (1 - b2) g^2, bc1 = 1 - b1, bc2 = 1 - b2, so
    # m / bc1 = g and sqrt(v) / sqrt(bc2) = |g|: p -= lr g / (|g| + eps), which
    # is lr * sign(g) up to lr * eps / |g| (seed test 5 only checked "decreased").
    # amsgrad: vmax = max(0, v) = v, the same step. wd 0 for AdamW.
    p = np.array([1.0, 2.0, 3.0], dtype)
    g = np.array([0.1, -2.0, 1000.0], dtype)
    p1, state = one_step(backend, kind, p, g, weight_decay=0.0, amsgrad=amsgrad)
    gd = f64(g)
    expected = f64(p) - 1e-3 * gd / (np.abs(gd) + 1e-8)
    check.close(p1, expected, output=f"{kind}/params", dtype=dtype)
    check.close(
        p1, [0.999, 2.001, 2.999], output=f"{kind}/params", dtype=dtype, tol=ROUNDED
    )
    check.close(state.exp_avg, 0.1 * gd, output=f"{kind}/state.exp_avg")
    check.close(state.exp_avg_sq, 1e-3 * gd * gd, output=f"{kind}/state.exp_avg_sq")


@pytest.mark.parametrize("scale", [1e-4, 1e-2, 1.0, 1e2, 1e4])
def test_adam_first_step_magnitude_is_lr_for_any_gradient_scale(
    backend, dtype, check, scale
):
    # From p = 0 the new params are the step itself: -lr g / (|g| + eps), i.e.
    # lr in magnitude whatever the scale of g (bias correction divides out 1 - b).
    g = (scale * np.array([1.0, -3.0, 0.5, 7.0])).astype(dtype)
    p1, _ = one_step(backend, "adam", np.zeros(4, dtype), g, lr=0.01)
    gd = f64(g)
    check.close(p1, -0.01 * gd / (np.abs(gd) + 1e-8), output="adam/params", dtype=dtype)


def test_adam_bias_correction_uses_t_equal_step_plus_one(backend, dtype, check):
    # From zero moments at step 7 the step taken is t = 8: m = .1 g, v = .001 g^2,
    # p = -(lr / (1 - .9^8)) * .1 g / (sqrt(.001) |g| / sqrt(1 - .999^8) + eps).
    # Using t = 7 or 9 changes the step by about 9% or 8%.
    g = np.array([0.5, -1.5, 2.0], dtype)
    z = np.zeros(3, dtype)
    state = spec.init_adam_state(z)._replace(step=7)
    p1, new = backend.adam_step(z, g, state, lr=0.01)
    gd = f64(g)
    bc1, bc2 = 1.0 - 0.9**8, 1.0 - 0.999**8
    denom = math.sqrt(1e-3) * np.abs(gd) / math.sqrt(bc2) + 1e-8
    check.close(p1, -(0.01 / bc1) * 0.1 * gd / denom, output="adam/params", dtype=dtype)
    assert new.step == 8


@pytest.mark.parametrize(("kind", "steps"), [("adam", 10_000), ("adamw", 2_000)])
def test_adam_long_run_constant_gradient_keeps_step_at_lr(
    backend, dtype, check, kind, steps
):
    # With a constant g, m_t = (1 - b1^t) g and v_t = (1 - b2^t) g^2 exactly, so
    # the bias-corrected step is lr g / (|g| + eps) at every t = 1 .. 10^4. Params
    # are reset to 0 before each step (wd = 0, so they do not enter the update)
    # and the new params are the step itself. The original's pow was off by 5%
    # at t = 1 and its error grew with t. (The float32 tolerance is looser: see
    # ("optim", "adam_long_run/step") in the table.)
    g = np.array([0.3, -2.0, 1e-3], dtype)
    z = np.zeros(3, dtype)
    step = getattr(backend, f"{kind}_step")
    state = INIT[kind](z)
    moves = np.empty((steps, 3), dtype)
    for t in range(steps):
        moves[t], state = step(z, g, state, lr=1e-3, weight_decay=0.0)
    gd = f64(g)
    expected = np.broadcast_to(-1e-3 * gd / (np.abs(gd) + 1e-8), moves.shape)
    check.close(moves, expected, output="adam_long_run/step", dtype=dtype)
    assert state.step == steps


def test_adamw_seed_case_decoupled_decay(backend, dtype, check):
    # Seed test 6 (AdamW, wd decoupled) only checked the return code. With g = 0,
    # m = v = 0 and the Adam part moves nothing (0 / eps), so the step is the
    # decay alone: p * (1 - lr wd) = p * (1 - .1 * .5) = .95 p.
    p = np.array([1.0, -2.0, 3.0], dtype)
    p1, _ = one_step(backend, "adamw", p, np.zeros(3, dtype), lr=0.1, weight_decay=0.5)
    check.close(p1, [0.95, -1.9, 2.85], output="adamw/params", dtype=dtype)


def test_adam_weight_decay_is_coupled(backend, dtype, check):
    # The same inputs through Adam: g' = .5 p, and a first step moves by
    # lr * sign(g') (up to eps): [1 - .1, -2 + .1, 3 - .1]. Equal to AdamW's
    # .95 p would mean the decay was decoupled (or dropped, as the original did).
    p = np.array([1.0, -2.0, 3.0], dtype)
    p1, _ = one_step(backend, "adam", p, np.zeros(3, dtype), lr=0.1, weight_decay=0.5)
    gd = 0.5 * f64(p)
    expected = f64(p) - 0.1 * gd / (np.abs(gd) + 1e-8)
    check.close(p1, expected, output="adam/params", dtype=dtype)
    check.close(p1, [0.9, -1.9, 2.9], output="adam/params", dtype=dtype, tol=ROUNDED)


def test_adamw_decays_before_the_adam_step(backend, dtype, check):
    # lr .1, wd .1, p = 2, g = .5: p = 2 * (1 - .01) = 1.98, then the first Adam
    # step moves by .1 * .5 / (.5 + 1e-8): p = 1.88 + 2e-9.
    p = np.array([2.0], dtype)
    p1, _ = one_step(
        backend, "adamw", p, np.array([0.5], dtype), lr=0.1, weight_decay=0.1
    )
    check.close(
        p1, [1.98 - 0.1 * 0.5 / (0.5 + 1e-8)], output="adamw/params", dtype=dtype
    )


def test_amsgrad_keeps_the_running_max(backend, dtype, rng):
    # With shrinking gradients and b2 = .5, v falls quickly; vmax must not.
    p = normal(rng, (17,), dtype)
    state, previous = INIT["adam"](p), np.zeros(17, dtype)
    for k in range(8):
        g = normal(rng, (17,), dtype, scale=2.0**-k)
        p, state = backend.adam_step(p, g, state, betas=(0.9, 0.5), amsgrad=True)
        assert np.all(state.max_exp_avg_sq >= previous)
        assert np.all(state.max_exp_avg_sq >= state.exp_avg_sq)
        previous = state.max_exp_avg_sq
    assert np.any(state.max_exp_avg_sq > state.exp_avg_sq)


@pytest.mark.parametrize(("amsgrad", "expected"), [(False, -0.2), (True, -0.125)])
def test_amsgrad_divides_by_the_largest_second_moment(
    backend, dtype, check, amsgrad, expected
):
    # betas (0, 0): m = g, v = g^2 and bc1 = bc2 = 1, so a step is lr g / (|g|
    # + eps) without amsgrad and lr g / (max_t |g_t| + eps) with it. lr .1,
    # g = 2 then .5 from p = 0: step 1 moves -.1 either way; step 2 moves -.1
    # (plain) or -.1 * .5 / 2 = -.025 (amsgrad).
    p = np.zeros(1, dtype)
    hyper = {"lr": 0.1, "betas": (0.0, 0.0), "amsgrad": amsgrad}
    grads = [np.array([2.0], dtype), np.array([0.5], dtype)]
    traj, state = run(backend, "adam", p, grads, INIT["adam"](p), hyper)
    check.close(traj[1], [expected], output="adam/params", dtype=dtype, tol=ROUNDED)
    check.close(state.max_exp_avg_sq, [4.0 if amsgrad else 0.0], output="vmax")


# ------------------------------------------------- golden: RMSprop -----
def test_rmsprop_first_step(backend, dtype, check):
    # Defaults lr .01, alpha .99: sq = .01 g^2, avg = .1 |g| + 1e-8, p -= .01 g /
    # avg = .1 sign(g) up to eps: [1 - .1, 2 + .1].
    p = np.array([1.0, 2.0], dtype)
    g = np.array([0.5, -0.25], dtype)
    p1, state = one_step(backend, "rmsprop", p, g)
    gd = f64(g)
    check.close(
        p1,
        f64(p) - 0.01 * gd / (0.1 * np.abs(gd) + 1e-8),
        output="rmsprop/params",
        dtype=dtype,
    )
    check.close(p1, [0.9, 2.1], output="rmsprop/params", dtype=dtype, tol=ROUNDED)
    check.close(state.square_avg, 0.01 * gd * gd, output="rmsprop/state.square_avg")


def test_rmsprop_centered_first_step(backend, dtype, check):
    # ga = .01 g, sq - ga^2 = .01 g^2 - .0001 g^2 = .0099 g^2, so the step is
    # .01 / sqrt(.0099) = .1005038 times sign(g) (up to eps).
    p = np.array([1.0, 2.0], dtype)
    g = np.array([0.5, -0.25], dtype)
    p1, state = one_step(backend, "rmsprop", p, g, centered=True)
    gd = f64(g)
    avg = math.sqrt(0.0099) * np.abs(gd) + 1e-8
    check.close(p1, f64(p) - 0.01 * gd / avg, output="rmsprop/params", dtype=dtype)
    check.close(
        p1, [0.8994962, 2.1005038], output="rmsprop/params", dtype=dtype, tol=ROUNDED
    )
    check.close(state.grad_avg, 0.01 * gd, output="rmsprop/state.grad_avg")


def test_rmsprop_momentum_two_steps(backend, dtype, check):
    # lr .01, momentum .5, the same g twice. Step 1: buf = g / (.1 |g| + eps)
    # (the buffer starts at 0, no first-step copy), p -= .01 buf. Step 2: sq =
    # .99 * .01 g^2 + .01 g^2 = .0199 g^2, buf = .5 buf + g / (sqrt(.0199)|g| +
    # eps), p -= .01 buf. For g > 0: buf1 = 10, buf2 = 5 + 7.088811 = 12.088811.
    p = np.array([1.0, 2.0], dtype)
    g = np.array([0.5, -0.25], dtype)
    hyper = {"lr": 0.01, "momentum": 0.5}
    traj, state = run(backend, "rmsprop", p, [g, g], INIT["rmsprop"](p), hyper)
    gd = f64(g)
    buf1 = gd / (0.1 * np.abs(gd) + 1e-8)
    buf2 = 0.5 * buf1 + gd / (math.sqrt(0.0199) * np.abs(gd) + 1e-8)
    expected = f64(p) - 0.01 * buf1 - 0.01 * buf2
    check.close(traj[1], expected, output="rmsprop/params", dtype=dtype)
    check.close(state.momentum_buffer, buf2, output="rmsprop/state.momentum_buffer")
    check.close(buf2, [12.088811, -12.088811], output="derivation", tol=ROUNDED)


# ------------------------------------------------- golden: Adagrad -----
def test_adagrad_two_steps_with_lr_decay(backend, dtype, check):
    # lr .1, lr_decay .1, p = 1, g = .5 twice. Step 1: clr = .1, sum = .25,
    # p = 1 - .1 * .5 / (.5 + 1e-10) = .9. Step 2: clr = .1 / 1.1, sum = .5,
    # p = .9 - (.1 / 1.1) * .5 / sqrt(.5) = .9 - .0642824 = .8357176.
    p = np.array([1.0], dtype)
    g = np.array([0.5], dtype)
    hyper = {"lr": 0.1, "lr_decay": 0.1}
    traj, state = run(backend, "adagrad", p, [g, g], INIT["adagrad"](p), hyper)
    step2 = (0.1 / 1.1) * 0.5 / (math.sqrt(0.5) + 1e-10)
    check.close(
        traj[0], [1.0 - 0.1 * 0.5 / (0.5 + 1e-10)], output="adagrad/params", dtype=dtype
    )
    check.close(traj[1], [traj[0][0] - step2], output="adagrad/params", dtype=dtype)
    check.close(traj[1], [0.8357176], output="adagrad/params", dtype=dtype, tol=ROUNDED)
    check.close(state.sum, [0.5], output="adagrad/state.sum")


def test_adagrad_initial_accumulator_value(backend, dtype, check):
    # sum starts at .75: after g = .5, sum = 1 and p = 1 - .01 * .5 / (1 + 1e-10).
    p = np.array([1.0, 1.0], dtype)
    state = spec.init_adagrad_state(p, initial_accumulator_value=0.75)
    check.exact(state.sum, np.full(2, 0.75, dtype), output="init.sum")
    p1, new = backend.adagrad_step(p, np.array([0.5, -0.5], dtype), state)
    check.close(p1, [0.995, 1.005], output="adagrad/params", dtype=dtype)
    check.close(new.sum, [1.0, 1.0], output="adagrad/state.sum", dtype=dtype)


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


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_hyperparameters_match_scalar_reference(backend, oracle, check, data):
    """One to four steps with hyperparameters drawn over their whole range (float64,
    so that ill-conditioned corners such as centered RMSprop with alpha near 1 do
    not turn float32 rounding into a failure)."""
    if F64 not in [np.dtype(d) for d in backend.dtypes]:
        pytest.skip("the backend does not list float64")
    kind = data.draw(st.sampled_from(KINDS))
    unit = st.floats(0.0, 0.999)
    hyper: dict[str, Any] = {"lr": data.draw(st.floats(0.0, 1.0))}
    hyper["weight_decay"] = data.draw(st.sampled_from([0.0, 0.01, 0.3]))
    if kind == "sgd":
        hyper["momentum"] = data.draw(st.sampled_from([0.0, 0.5, 0.9]))
        nesterov = hyper["momentum"] > 0 and data.draw(st.booleans())
        hyper["dampening"] = 0.0 if nesterov else data.draw(unit)
        hyper["nesterov"] = nesterov
    elif kind in ("adam", "adamw"):
        hyper["betas"] = (data.draw(unit), data.draw(unit))
        hyper["amsgrad"] = data.draw(st.booleans())
    elif kind == "rmsprop":
        hyper["alpha"] = data.draw(st.one_of(st.just(0.0), st.floats(0.5, 1.0)))
        hyper["momentum"] = data.draw(st.sampled_from([0.0, 0.9]))
        hyper["centered"] = data.draw(st.booleans())
        hyper["eps"] = 1e-6
    else:
        hyper["lr_decay"] = data.draw(st.floats(0.0, 1.0))
    size = data.draw(st.sampled_from(EDGE_SIZES))
    steps = data.draw(st.integers(1, 4))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    p0, grads = draw(rng, size, F64, steps=steps)
    traj, state = run(backend, kind, p0, grads, INIT[kind](p0), hyper)
    o_traj, _ = run(oracle, kind, p0, grads, INIT[kind](p0), hyper)
    r_traj, r_arrays = ref_run(kind, p0, grads, INIT[kind](p0), hyper)
    check.close(traj[-1], o_traj[-1], output=f"{kind}/params", dtype=F64)
    check.close(traj[-1], r_traj[-1], output=f"{kind}/params", dtype=F64)
    for field, a, r in zip(state._fields[:-1], arrays_of(state), r_arrays, strict=True):
        check.close(a, r, output=f"{kind}/state.{field}", dtype=F64)


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
