"""Mutant: the C backend whose finite scan never reads the last element, as a
vector loop that stops one short of its tail would: a NaN there reaches every
kernel after the validation that trusted the scan."""

import numpy as np
from cllm_c import *  # noqa: F403
from cllm_c import all_finite as _real
from cllm_c import build_info, dtypes, model_kernels, version  # noqa: F401

name = "mutant-all-finite-misses-tail"


def all_finite(x):  # type: ignore[no-untyped-def]
    flat = np.ravel(x)
    return _real(flat[:-1]) if flat.size else _real(flat)  # the planted mistake
