"""Finite-difference gradient checks (float64 only).

For a function ``f`` with output ``y`` and an upstream gradient ``dy`` we check
the analytical vector-Jacobian product against central differences of the
scalar ``L(x) = sum(dy * f(x))``:

    dL/dx_i ~= (L(x + h e_i) - L(x - h e_i)) / (2 h)

The truncation error is O(h^2 f''') and the rounding error O(eps |L| / h); with
h = 1e-6 in float64 both stay near 1e-10 for O(1) inputs, far below the
``gradcheck`` tolerance. Float32 is never finite-differenced: its rounding error
at any usable h swamps the check, so float32 backwards are compared with the
float64 reference backward instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

STEP = 1e-6


def needs_float64(backend: Any) -> None:
    """Skip the calling test where ``backend`` has no float64 to difference in."""
    if np.dtype(np.float64) not in {np.dtype(d) for d in backend.dtypes}:
        pytest.skip(f"{backend.name} has no float64: finite differences need it")


def numerical_vjp(
    f: Callable[..., np.ndarray],
    args: list[np.ndarray],
    index: int,
    dy: np.ndarray,
    h: float = STEP,
) -> np.ndarray:
    """Central-difference gradient of ``sum(dy * f(*args))`` w.r.t. ``args[index]``."""
    x = args[index]
    if x.dtype != np.float64:
        raise TypeError("finite differences are only meaningful in float64")
    grad = np.zeros_like(x)
    flat = grad.reshape(-1)
    for i in range(x.size):  # tiny shapes only: one pair of forwards per element
        plus = [a.copy() if j == index else a for j, a in enumerate(args)]
        minus = [a.copy() if j == index else a for j, a in enumerate(args)]
        plus[index].reshape(-1)[i] += h
        minus[index].reshape(-1)[i] -= h
        lp = float(np.sum(dy * f(*plus)))
        lm = float(np.sum(dy * f(*minus)))
        flat[i] = (lp - lm) / (2.0 * h)
    return grad
