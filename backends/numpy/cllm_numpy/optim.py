"""Optimizer steps over the flat (P,) buffer, following ``cllm_spec.optim``.

Every hyperparameter reaches the arithmetic as a Python float (the validators
return them so), which NumPy treats as a weak scalar: a float32 buffer stays
float32 instead of being promoted by an ``np.float64`` lr.
"""

from __future__ import annotations

import math

import numpy as np

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


def _coupled_decay(grads: np.ndarray, params: np.ndarray, wd: float) -> np.ndarray:
    # PyTorch adds the L2 term only when wd != 0; with wd == 0 the gradient is
    # used as is (0 * p would also turn the sign of a -0.0 gradient).
    return grads + wd * params if wd != 0.0 else grads


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
    h = validate_sgd(
        params,
        grads,
        state,
        lr=lr,
        momentum=momentum,
        dampening=dampening,
        weight_decay=weight_decay,
        nesterov=nesterov,
    )
    g = _coupled_decay(grads, params, h.weight_decay)
    if h.momentum != 0.0:
        if state.step == 0:  # PyTorch's buffer starts as a copy of g, undamped
            buf = g.copy()
        else:
            buf = h.momentum * state.momentum_buffer + (1.0 - h.dampening) * g
        g = g + h.momentum * buf if h.nesterov else buf
    else:
        buf = state.momentum_buffer.copy()
    return params - h.lr * g, SGDState(momentum_buffer=buf, step=int(state.step) + 1)


def _adam(
    params: np.ndarray,
    grads: np.ndarray,
    state: AdamState,
    h: AdamHyper,
    decoupled: bool,
) -> tuple[np.ndarray, AdamState]:
    """The shared Adam/AdamW update; ``decoupled`` selects AdamW's decay."""
    if decoupled:
        p = params * (1.0 - h.lr * h.weight_decay)
        g = grads
    else:
        p = params
        g = _coupled_decay(grads, params, h.weight_decay)
    t = int(state.step) + 1
    m = h.beta1 * state.exp_avg + (1.0 - h.beta1) * g
    v = h.beta2 * state.exp_avg_sq + (1.0 - h.beta2) * g * g
    bc1, bc2 = adam_bias_corrections(h.beta1, h.beta2, t)
    if h.amsgrad:
        vmax = np.maximum(state.max_exp_avg_sq, v)
        vhat = vmax
    else:
        vmax = state.max_exp_avg_sq.copy()
        vhat = v
    denom = np.sqrt(vhat) / math.sqrt(bc2) + h.eps
    p_new = p - (h.lr / bc1) * m / denom
    return p_new, AdamState(exp_avg=m, exp_avg_sq=v, max_exp_avg_sq=vmax, step=t)


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
    h = validate_adam(
        params,
        grads,
        state,
        lr=lr,
        betas=betas,
        eps=eps,
        weight_decay=weight_decay,
        amsgrad=amsgrad,
    )
    return _adam(params, grads, state, h, decoupled=False)


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
    h = validate_adam(
        params,
        grads,
        state,
        lr=lr,
        betas=betas,
        eps=eps,
        weight_decay=weight_decay,
        amsgrad=amsgrad,
    )
    return _adam(params, grads, state, h, decoupled=True)


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
    h = validate_rmsprop(
        params,
        grads,
        state,
        lr=lr,
        alpha=alpha,
        eps=eps,
        weight_decay=weight_decay,
        momentum=momentum,
        centered=centered,
    )
    g = _coupled_decay(grads, params, h.weight_decay)
    sq = h.alpha * state.square_avg + (1.0 - h.alpha) * g * g
    if h.centered:
        ga = h.alpha * state.grad_avg + (1.0 - h.alpha) * g
        avg = np.sqrt(sq - ga * ga) + h.eps  # >= 0 in exact arithmetic (variance)
    else:
        ga = state.grad_avg.copy()
        avg = np.sqrt(sq) + h.eps
    if h.momentum > 0.0:
        buf = h.momentum * state.momentum_buffer + g / avg
        p_new = params - h.lr * buf
    else:
        buf = state.momentum_buffer.copy()
        p_new = params - h.lr * g / avg
    new_state = RMSpropState(
        square_avg=sq, momentum_buffer=buf, grad_avg=ga, step=int(state.step) + 1
    )
    return p_new, new_state


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
    h = validate_adagrad(
        params,
        grads,
        state,
        lr=lr,
        lr_decay=lr_decay,
        weight_decay=weight_decay,
        eps=eps,
    )
    t = int(state.step) + 1
    g = _coupled_decay(grads, params, h.weight_decay)
    total = state.sum + g * g
    clr = adagrad_lr(h.lr, h.lr_decay, t)
    p_new = params - clr * g / (np.sqrt(total) + h.eps)
    return p_new, AdagradState(sum=total, step=t)
