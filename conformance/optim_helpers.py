"""Configurations and step runners shared by the optimizer conformance files.

``CONFIGS`` names every optimizer with the hyperparameters it is checked under
(empty dicts check the backend's defaults); ``run`` steps a backend through a
list of gradients and ``draw`` makes params and gradients whose scale changes
from step to step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from cllm_spec import optim as spec
from conformance.strategies import normal

STEPS = 25
F64 = np.dtype(np.float64)

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
