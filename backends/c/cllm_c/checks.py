"""The finite scan of ``csrc/checks.c``: the optional ``all_finite`` capability.

``cllm_spec.checks.expect_finite`` runs it, when a backend offers one, in
place of NumPy's sum over the array: the spec scans the parameters, gradients
and optimizer state for NaN on every training step and the weights once per
``generate`` call, and on large buffers that scan is a visible share of the
step (its contract is :func:`cllm_spec.checks.expect_finite`'s).
"""

from __future__ import annotations

import numpy as np

from cllm_c._lib import F32, F64, check, ffi, kernel, ptr
from cllm_spec.errors import DTypeError


def all_finite(x: np.ndarray) -> bool:
    """True iff no element of the float32 or float64 array ``x`` is NaN or
    +-inf (exact; any shape, any layout: a strided ``x`` is scanned by NumPy)."""
    if not isinstance(x, np.ndarray) or x.dtype not in (F32, F64):
        raise DTypeError("x: expected a float32 or float64 array")
    if not x.flags.c_contiguous:
        return bool(np.isfinite(x).all())  # a copy would cost what the scan saves
    out = ffi.new("int *")
    check(kernel("cllm_all_finite", x.dtype)(ptr(x), x.size, out), "finite scan")
    return bool(out[0])
