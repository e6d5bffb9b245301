"""The named tolerance table: how close a backend's floats must be to the reference.

A check passes when, element by element,

    |actual - expected| <= atol + rtol * |expected|

with ``expected`` from the float64 reference. The *headroom* of a check is the
largest ratio ``|actual - expected| / (atol + rtol * |expected|)``: below 1 passes;
the conformance report keeps the worst headroom per component, so a tolerance
that is far too loose (headroom near 0) or too tight (near 1) is visible.

Entries are keyed by (component, output, dtype). Lookup falls back to
(component, "*", dtype) and then to the dtype default. Each entry says why it
has its size and the worst error observed when it was calibrated (float32 on
this project's NumPy backend against the float64 reference, 2 cores x86-64).

float64 backends are compared with ``FLOAT64_DEFAULT``: a float64 backend that
computes the same formula in another order lands within a few ulps times the
reduction length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float
    why: str
    observed: str = "not calibrated"

    def bound(self, expected: np.ndarray) -> np.ndarray:
        bound: np.ndarray = self.atol + self.rtol * np.abs(expected)
        return bound


FLOAT32_DEFAULT = Tolerance(
    rtol=1e-5,
    atol=1e-6,
    why="float32 has eps 1.2e-7; short reductions (<= 65 terms) of O(1) values "
    "accumulate a few tens of eps",
)
FLOAT64_DEFAULT = Tolerance(
    rtol=1e-10,
    atol=1e-12,
    why="float64 has eps 2.2e-16; leaves 4 orders of magnitude for reordered sums",
)

_DEFAULTS = {"float32": FLOAT32_DEFAULT, "float64": FLOAT64_DEFAULT}

#: (component, output, dtype) -> Tolerance. "*" as output matches any output.
TABLE: dict[tuple[str, str, str], Tolerance] = {
    # -- finite differences: analytic backward (float64) vs central differences -
    ("gradcheck", "*", "float64"): Tolerance(
        rtol=1e-6,
        atol=1e-7,
        why="central differences with h = 1e-6 carry O(h^2) truncation and "
        "O(eps/h) ~ 1e-10 rounding error on O(1) values",
    ),
    # -- losses -------------------------------------------------------------
    ("losses", "*", "float32"): Tolerance(
        rtol=1e-5,
        atol=2e-6,
        why="exp/log of float32 logits plus a sum over V <= 65 classes",
    ),
    # -- gradients ------------------------------------------------------------
    ("gradients", "*", "float32"): Tolerance(
        rtol=1e-5,
        atol=1e-6,
        why="sums of squares over P <= 4096 elements (pairwise summation)",
    ),
    # -- optim ----------------------------------------------------------------
    ("optim", "*", "float32"): Tolerance(
        rtol=1e-5,
        atol=1e-6,
        why="20+ elementwise steps; each step loses about 1 ulp in the division "
        "by sqrt(v) + eps",
    ),
    # -- attention ------------------------------------------------------------
    ("attention", "*", "float32"): Tolerance(
        rtol=1e-4,
        atol=1e-5,
        why="two matmuls with K = HS and K = T, softmax in between, then the QKV "
        "and output projections with K = C",
    ),
    # -- ffn ------------------------------------------------------------------
    ("ffn", "*", "float32"): Tolerance(
        rtol=1e-4,
        atol=1e-5,
        why="matmuls with K = C or F (<= 65 terms here); layernorm divides by a "
        "standard deviation that can be small",
    ),
    # -- embedding ------------------------------------------------------------
    ("embedding", "*", "float32"): Tolerance(
        rtol=1e-6,
        atol=1e-7,
        why="a lookup and one addition per element; backward sums at most B*T rows",
    ),
}


def tolerance(component: str, output: str, dtype: np.dtype | str) -> Tolerance:
    """The tolerance for ``output`` of ``component`` computed in ``dtype``."""
    key = np.dtype(dtype).name
    for probe in ((component, output, key), (component, "*", key)):
        if probe in TABLE:
            return TABLE[probe]
    return _DEFAULTS.get(key, FLOAT32_DEFAULT)
