"""Mutant: linear of a few rows (a decoding step) drops the last IN % 16
inputs, as a matrix-vector kernel whose 16-lane loop forgets its tail would."""

import numpy as np
from cllm_numpy.ffn import linear_forward as _reference

from conformance.mutants._base import *  # noqa: F403

name = "mutant-gemv-drops-k-tail"


def linear_forward(x, w, b):  # type: ignore[no-untyped-def]
    y, cache = _reference(x, w, b)
    n_in = w.shape[1]
    full = n_in - n_in % 16
    if x.size // n_in > 16 or full == n_in:
        return y, cache
    # the planted mistake: the tail's products are missing
    tail = np.asarray(x)[..., full:] @ np.asarray(w)[:, full:].T
    return y - tail, cache
