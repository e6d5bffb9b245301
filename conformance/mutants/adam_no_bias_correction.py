"""Mutant: Adam without bias correction (m and v used as they are)."""

import numpy as np

from cllm_spec.optim import validate_adam
from cllm_spec.protocols import AdamState
from conformance.mutants._base import *  # noqa: F403

name = "mutant-adam-no-bias-correction"


def adam_step(  # type: ignore[no-untyped-def]
    params,
    grads,
    state,
    *,
    lr=1e-3,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.0,
    amsgrad=False,
):
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
    g = grads + h.weight_decay * params if h.weight_decay else grads
    m = h.beta1 * state.exp_avg + (1.0 - h.beta1) * g
    v = h.beta2 * state.exp_avg_sq + (1.0 - h.beta2) * g * g
    vmax = np.maximum(state.max_exp_avg_sq, v) if h.amsgrad else state.max_exp_avg_sq
    vhat = vmax if h.amsgrad else v
    p = params - h.lr * m / (np.sqrt(vhat) + h.eps)
    return p, AdamState(m, v, vmax.copy(), int(state.step) + 1)
