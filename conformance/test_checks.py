"""Conformance of a backend's optional finite scan, ``all_finite(x) -> bool``.

The spec's validation (``cllm_spec.checks.expect_finite``) trusts a True from
it: a scan that misses one NaN lets that NaN into every kernel after it. So the
answer must be exact for every size (around the SIMD widths and the blocks a
backend splits the work into), every position of the bad value, both dtypes,
any shape and any layout. A backend without the scan is skipped here and
validated by NumPy alone; the checks through the public API run for all.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from cllm_spec.errors import DTypeError, NonFiniteError
from cllm_spec.model import ModelConfig, forward, init_params
from conformance.strategies import EDGE_SIZES, normal

# past the 16-lane tails, and around 2^16 and 2^18: block sizes a backend
# may split a scan into for its threads
SIZES = (0, *EDGE_SIZES, 65535, 65536, 65537, 262143, 262145)
BAD = (math.nan, math.inf, -math.inf)


def scan_of(backend: Any) -> Any:
    scan = getattr(backend, "all_finite", None)
    if scan is None:
        pytest.skip(f"backend {backend.name} offers no all_finite (optional)")
    return scan


def positions(n: int) -> list[int]:
    """The first, last and middle elements and both sides of each block edge."""
    edges = [e + d for e in (16, 65536, 262144) for d in (-1, 0) if e + d < n]
    return sorted({0, n // 2, n - 1, *edges})


@pytest.mark.parametrize("n", SIZES)
def test_all_finite_finds_one_bad_value_anywhere(backend, dtype, rng, n):
    scan = scan_of(backend)
    x = normal(rng, (n,), dtype)
    assert scan(x) is True
    for i in positions(n) if n else []:
        for bad in BAD:
            y = x.copy()
            y[i] = bad
            assert scan(y) is False, f"{bad} at {i} of {n} missed"


def test_all_finite_passes_the_extremes_of_the_finite_range(backend, dtype):
    scan = scan_of(backend)
    info = np.finfo(dtype)
    edge = [info.max, -info.max, info.tiny, info.smallest_subnormal, -0.0, 0.0]
    x = np.array(edge * 11, dtype=dtype)  # 66: past a 16-lane tail
    assert scan(x) is True
    with np.errstate(over="ignore"):
        doubled = x + x  # 2 * max overflows to +-inf
    assert scan(doubled) is False


@pytest.mark.parametrize("layout", ["2d", "fortran", "strided", "negative"])
def test_all_finite_reads_the_elements_of_any_layout(backend, dtype, rng, layout):
    scan = scan_of(backend)
    base = normal(rng, (37, 41), dtype)
    if layout == "2d":
        view, hidden = base, None
    elif layout == "fortran":
        view, hidden = np.asfortranarray(base), None
    elif layout == "strided":
        view, hidden = base[:, ::2], (0, 1)  # column 1 is not in the view
    else:
        view, hidden = base[::-1, ::-1], None
    assert scan(view) is True
    if hidden is not None:
        base[hidden] = np.nan
        assert scan(view) is True, "a NaN outside the view was counted"
    view[-1, -1] = np.inf
    assert scan(view) is False


def test_all_finite_rejects_what_is_not_a_float_array(backend):
    scan = scan_of(backend)
    for bad in ([1.0, math.nan], np.zeros(3, np.int64), np.zeros(3, np.float16)):
        with pytest.raises(DTypeError):
            scan(bad)


def test_forward_rejects_a_nan_in_the_last_weight(backend, dtype, rng):
    # through the public API, with or without the scan: the params are the
    # array the scan serves, and their last element ends the last block
    cfg = ModelConfig(vocab_size=11, n_embd=8, n_layer=1, n_head=2, block_size=4)
    params = init_params(cfg, rng, dtype)
    ids = rng.integers(0, cfg.vocab_size, (2, 3))
    forward(backend, cfg, params, ids)
    for bad in BAD:
        params[-1] = bad
        with pytest.raises(NonFiniteError):
            forward(backend, cfg, params, ids)
