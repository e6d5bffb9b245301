"""Optimizer steps on the fused C kernels of ``csrc/optim.c``.

The update rules, defaults and error contract are in :mod:`cllm_spec.optim`.
Constants derived from the hyperparameters (``1 - beta``, the bias-corrected
step size, ``1 - lr * wd``) are computed here in double, as the reference
computes them in Python, and rounded once to the buffers' dtype by the call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from cllm_c._lib import F32, arr, check, empty, kernel, lib, ptr
from cllm_c.checks import all_finite
from cllm_spec.optim import (
    AdamHyper,
    adagrad_lr,
    adam_bias_corrections,
    validate_adagrad,
    validate_adam,
    validate_rmsprop,
    validate_sgd,
)
from cllm_spec.protocols import AdagradState, AdamState, RMSpropState, SGDState


def _new(like: np.ndarray, count: int) -> list[np.ndarray]:
    return [empty(like.shape, dtype=like.dtype) for _ in range(count)]


def _scans_in_kernel(params: Any) -> bool:
    """The float32 step kernels scan their inputs for NaN and inf as they read
    them (csrc/optim.c), so the wrapper leaves out the validator's scans."""
    return getattr(params, "dtype", None) == F32


def _check_step(status: int, what: str, validate: Callable[[], object]) -> None:
    """``check`` for a step kernel: its refusal of a non-finite input becomes
    the spec's error, from the full validation (with the scans left out)."""
    if status == lib.CLLM_ERR_NONFINITE:
        validate()
    check(status, what)


def sgd_step(
    params: np.ndarray,
    grads: np.ndarray,
    state: SGDState,
    *,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
) -> tuple[np.ndarray, SGDState]:
    """One ``torch.optim.SGD`` step (see ``cllm_spec.optim``)."""
    hyper = dict(
        lr=lr,
        momentum=momentum,
        dampening=dampening,
        weight_decay=weight_decay,
        nesterov=nesterov,
        finite_scan=all_finite,
    )
    in_kernel = _scans_in_kernel(params)
    h = validate_sgd(params, grads, state, **hyper, check_finite=not in_kernel)
    p, g = arr("params", params), arr("grads", grads)
    buf = arr("state.momentum_buffer", state.momentum_buffer)
    p_out, buf_out = _new(p, 2)
    status = kernel("cllm_sgd_step", p.dtype)(
        ptr(p),
        ptr(g),
        ptr(buf),
        p.size,
        h.lr,
        h.momentum,
        1.0 - h.dampening,
        h.weight_decay,
        int(h.nesterov),
        int(state.step == 0),
        ptr(p_out),
        ptr(buf_out),
    )
    _check_step(status, "sgd_step", lambda: validate_sgd(params, grads, state, **hyper))
    return p_out, SGDState(momentum_buffer=buf_out, step=int(state.step) + 1)


def _adam(
    params: np.ndarray,
    grads: np.ndarray,
    state: AdamState,
    hyper: dict[str, Any],
    decoupled: bool,
) -> tuple[np.ndarray, AdamState]:
    """Adam (or AdamW: ``decoupled``) with the hyperparameters of
    ``validate_adam``, which this calls."""
    scan = not _scans_in_kernel(params)
    h: AdamHyper = validate_adam(
        params, grads, state, **hyper, finite_scan=all_finite, check_finite=scan
    )
    p, g = arr("params", params), arr("grads", grads)
    m, v = (
        arr("state.exp_avg", state.exp_avg),
        arr("state.exp_avg_sq", state.exp_avg_sq),
    )
    vmax = arr("state.max_exp_avg_sq", state.max_exp_avg_sq)
    t = int(state.step) + 1
    bc1, bc2 = adam_bias_corrections(h.beta1, h.beta2, t)
    p_out, m_out, v_out, vmax_out = _new(p, 4)
    status = kernel("cllm_adam_step", p.dtype)(
        ptr(p),
        ptr(g),
        ptr(m),
        ptr(v),
        ptr(vmax),
        p.size,
        h.beta1,
        h.beta2,
        1.0 - h.beta1,
        1.0 - h.beta2,
        h.eps,
        h.weight_decay,
        int(decoupled),
        int(h.amsgrad),
        1.0 - h.lr * h.weight_decay,
        h.lr / bc1,
        math.sqrt(bc2),
        ptr(p_out),
        ptr(m_out),
        ptr(v_out),
        ptr(vmax_out),
    )
    _check_step(
        status,
        "adamw_step" if decoupled else "adam_step",
        lambda: validate_adam(params, grads, state, **hyper, finite_scan=all_finite),
    )
    return p_out, AdamState(
        exp_avg=m_out, exp_avg_sq=v_out, max_exp_avg_sq=vmax_out, step=t
    )


def adam_step(
    params: np.ndarray,
    grads: np.ndarray,
    state: AdamState,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
) -> tuple[np.ndarray, AdamState]:
    """One ``torch.optim.Adam`` step: L2 weight decay added to the gradient."""
    hyper = dict(
        lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad
    )
    return _adam(params, grads, state, hyper, decoupled=False)


def adamw_step(
    params: np.ndarray,
    grads: np.ndarray,
    state: AdamState,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    amsgrad: bool = False,
) -> tuple[np.ndarray, AdamState]:
    """One ``torch.optim.AdamW`` step: p *= 1 - lr * wd, then Adam without wd."""
    hyper = dict(
        lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad
    )
    return _adam(params, grads, state, hyper, decoupled=True)


def rmsprop_step(
    params: np.ndarray,
    grads: np.ndarray,
    state: RMSpropState,
    *,
    lr: float = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
) -> tuple[np.ndarray, RMSpropState]:
    """One ``torch.optim.RMSprop`` step (see ``cllm_spec.optim``)."""
    hyper = dict(
        lr=lr,
        alpha=alpha,
        eps=eps,
        weight_decay=weight_decay,
        momentum=momentum,
        centered=centered,
        finite_scan=all_finite,
    )
    in_kernel = _scans_in_kernel(params)
    h = validate_rmsprop(params, grads, state, **hyper, check_finite=not in_kernel)
    p, g = arr("params", params), arr("grads", grads)
    sq = arr("state.square_avg", state.square_avg)
    buf = arr("state.momentum_buffer", state.momentum_buffer)
    ga = arr("state.grad_avg", state.grad_avg)
    p_out, sq_out, buf_out, ga_out = _new(p, 4)
    status = kernel("cllm_rmsprop_step", p.dtype)(
        ptr(p),
        ptr(g),
        ptr(sq),
        ptr(buf),
        ptr(ga),
        p.size,
        h.lr,
        h.alpha,
        1.0 - h.alpha,
        h.eps,
        h.weight_decay,
        h.momentum,
        int(h.centered),
        ptr(p_out),
        ptr(sq_out),
        ptr(buf_out),
        ptr(ga_out),
    )
    _check_step(
        status, "rmsprop_step", lambda: validate_rmsprop(params, grads, state, **hyper)
    )
    new_state = RMSpropState(
        square_avg=sq_out,
        momentum_buffer=buf_out,
        grad_avg=ga_out,
        step=int(state.step) + 1,
    )
    return p_out, new_state


def adagrad_step(
    params: np.ndarray,
    grads: np.ndarray,
    state: AdagradState,
    *,
    lr: float = 1e-2,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    eps: float = 1e-10,
) -> tuple[np.ndarray, AdagradState]:
    """One ``torch.optim.Adagrad`` step (see ``cllm_spec.optim``)."""
    hyper = dict(
        lr=lr,
        lr_decay=lr_decay,
        weight_decay=weight_decay,
        eps=eps,
        finite_scan=all_finite,
    )
    in_kernel = _scans_in_kernel(params)
    h = validate_adagrad(params, grads, state, **hyper, check_finite=not in_kernel)
    p, g, s = arr("params", params), arr("grads", grads), arr("state.sum", state.sum)
    t = int(state.step) + 1
    p_out, s_out = _new(p, 2)
    status = kernel("cllm_adagrad_step", p.dtype)(
        ptr(p),
        ptr(g),
        ptr(s),
        p.size,
        adagrad_lr(h.lr, h.lr_decay, t),
        h.weight_decay,
        h.eps,
        ptr(p_out),
        ptr(s_out),
    )
    _check_step(
        status, "adagrad_step", lambda: validate_adagrad(params, grads, state, **hyper)
    )
    return p_out, AdagradState(sum=s_out, step=t)
