"""Conformance of the optimizers over whole trajectories, against two references.

Spec: ``cllm_spec.optim``. The float64 NumPy oracle, and an independent scalar
reference in this file (plain Python floats, one element and one step at a
time, written from the formulas of the spec docstring): every configuration of
``CONFIGS`` over many steps, and hyperparameters drawn over their whole range.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance.optim_helpers import (
    CONFIGS,
    F64,
    INIT,
    KINDS,
    STEPS,
    arrays_of,
    draw,
    f64,
    run,
)
from conformance.strategies import EDGE_SIZES

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


# ------------------------------------------ hyperparameters at random -----
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
