"""Conformance of each optimizer's update rule, by golden values derived by hand.

Spec: ``cllm_spec.optim``. SGD (momentum, dampening, Nesterov, weight decay),
Adam and AdamW (bias correction, coupled and decoupled decay, AMSGrad), RMSprop
(centered, momentum) and Adagrad (lr decay, initial accumulator), one or two
steps at a time, each value worked out in the comment beside it; the seed
project's optimizer tests are among them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from cllm_spec import optim as spec
from cllm_spec.tolerances import Tolerance
from conformance.optim_helpers import INIT, f64, run
from conformance.strategies import normal

# For values written as rounded decimals ("moves by lr * sign(g) up to eps"): the
# exact closed form is checked with the table tolerance next to each of them.
ROUNDED = Tolerance(
    rtol=1e-6, atol=0.0, why="a decimal rounded to 7 digits, or exact up to eps/|g|"
)


def one_step(
    backend: Any, kind: str, p: np.ndarray, g: np.ndarray, **hyper: Any
) -> tuple[np.ndarray, Any]:
    return getattr(backend, f"{kind}_step")(p, g, INIT[kind](p), **hyper)


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
