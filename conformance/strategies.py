"""Shared input generators and the sizes every component is tested at.

``EDGE_SIZES`` straddle the SIMD widths a backend may use (4, 8 and 16 lanes of
float32, 2/4/8 of float64), so a kernel whose tail handling is wrong fails at
least one of them.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, settings

EDGE_SIZES = (1, 3, 7, 15, 16, 17, 31, 33, 63, 65)
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: Hypothesis tests that take pytest fixtures (``check``, ``backend``): they hold
#: no state between examples; too_slow stays waived as in the suite's profiles
FIXTURE_OK = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


def normal(
    rng: np.random.Generator, shape: tuple[int, ...], dtype: object, scale: float = 1.0
) -> np.ndarray:
    """Standard normal values drawn in float64, then rounded once to ``dtype``.

    The oracle receives the rounded values upcast to float64, so both sides
    start from identical inputs.
    """
    return np.asarray(scale * rng.standard_normal(shape)).astype(dtype)


def as_oracle(*arrays: np.ndarray) -> list[np.ndarray]:
    """Float arrays upcast to float64 for the reference; ints pass unchanged."""
    return [a.astype(np.float64) if a.dtype.kind == "f" else a for a in arrays]
