"""Mutant: the C backend whose optimizer wrappers drop the step kernel's
refusal of a NaN or inf input (csrc/optim.c scans the inputs, the wrapper
leaves the validator's scans out for float32): a NaN gradient would then
become NaN weights without an error."""

import cllm_c.optim as _optim
from cllm_c import *  # noqa: F403
from cllm_c import build_info, dtypes, version  # noqa: F401
from cllm_c._lib import check, lib

name = "mutant-optim-nan-slips-through"


def _check_step(status, what, validate):  # type: ignore[no-untyped-def]
    if status != lib.CLLM_ERR_NONFINITE:  # the planted mistake: the refusal ignored
        check(status, what)


_optim._check_step = _check_step
