"""The one comparator every numeric assertion of the suite goes through.

A failure message names the component, output, backend, dtype and shape, the
mismatched count, the max abs and rel errors with their indices and values, the
tolerance used and where it came from, the headroom, and a command that
reproduces the failure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cllm_spec.tolerances import Tolerance


@dataclass(frozen=True)
class Comparison:
    """How far ``actual`` is from ``expected`` under a tolerance."""

    headroom: float  # max |a - e| / (atol + rtol |e|); <= 1 passes
    mismatched: int
    total: int
    max_abs: float
    max_abs_index: tuple[int, ...]
    max_rel: float
    max_rel_index: tuple[int, ...]

    @property
    def ok(self) -> bool:
        return self.mismatched == 0


def _special_mismatch(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Where NaN / inf disagree: NaN must meet NaN, inf must meet the same inf."""
    a_nan, e_nan = np.isnan(actual), np.isnan(expected)
    a_inf, e_inf = np.isinf(actual), np.isinf(expected)
    inf_diff = (a_inf | e_inf) & ~(
        a_inf & e_inf & (np.sign(actual) == np.sign(expected))
    )
    return (a_nan != e_nan) | inf_diff


def compare(actual: np.ndarray, expected: np.ndarray, tol: Tolerance) -> Comparison:
    """Elementwise ``|a - e| <= atol + rtol |e|``, computed in float64."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    special = _special_mismatch(a, e)
    finite = np.isfinite(a) & np.isfinite(e)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf where both agree
        abs_err = np.where(finite, np.abs(a - e), 0.0)
    rel_err = np.where(
        finite, abs_err / np.maximum(np.abs(e), np.finfo(np.float64).tiny), 0.0
    )
    ratio = abs_err / tol.bound(e)
    ratio = np.where(special, np.inf, ratio)
    bad = ratio > 1.0
    if a.size == 0:
        return Comparison(0.0, 0, 0, 0.0, (), 0.0, ())
    i_abs = np.unravel_index(
        int(np.argmax(np.where(special, np.inf, abs_err))), a.shape
    )
    i_rel = np.unravel_index(int(np.argmax(rel_err)), a.shape)
    return Comparison(
        headroom=float(ratio.max()),
        mismatched=int(bad.sum()),
        total=int(a.size),
        max_abs=float(abs_err.max()) if not special.any() else float("inf"),
        max_abs_index=tuple(int(i) for i in i_abs),
        max_rel=float(rel_err.max()),
        max_rel_index=tuple(int(i) for i in i_rel),
    )


def describe_failure(
    c: Comparison,
    actual: np.ndarray,
    expected: np.ndarray,
    tol: Tolerance,
    *,
    where: str,
    tol_source: str,
    repro: str,
) -> str:
    """A multi-line failure message with everything needed to act on it."""
    a, e = np.asarray(actual), np.asarray(expected)
    pct = 100.0 * c.mismatched / max(c.total, 1)
    return "\n".join(
        [
            f"conformance mismatch: {where}",
            f"  mismatched elements: {c.mismatched} / {c.total} ({pct:.1f}%)",
            f"  max abs error: {c.max_abs:.3e} at index {c.max_abs_index}: "
            f"actual={a[c.max_abs_index]!r} expected={e[c.max_abs_index]!r}",
            f"  max rel error: {c.max_rel:.3e} at index {c.max_rel_index}: "
            f"actual={a[c.max_rel_index]!r} expected={e[c.max_rel_index]!r}",
            f"  tolerance: rtol={tol.rtol:g} atol={tol.atol:g} "
            f"({tol_source}; {tol.why})",
            f"  headroom: {c.headroom:.3g} (a pass needs <= 1)",
            f"  reproduce: {repro}",
        ]
    )
