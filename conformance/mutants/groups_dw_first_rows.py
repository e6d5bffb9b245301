"""Mutant: the C backend whose grouped linear backward gives every group the
weight gradient of the first group's rows, as a loop that sliced with the
wrong index would: the steps of a multi-group worker would then differ from
the same groups computed one by one."""

from types import SimpleNamespace

from cllm_c import *  # noqa: F403
from cllm_c import build_info, dtypes, version  # noqa: F401
from cllm_c import model_kernels as _real

name = "mutant-groups-dw-first-rows"


def _linear_backward(dy, cache, *, out, groups=None):  # type: ignore[no-untyped-def]
    if groups is not None:
        groups = [groups[0]] * len(groups)  # the planted mistake
    return _real.linear_backward(dy, cache, out=out, groups=groups)


model_kernels = SimpleNamespace(**{n: getattr(_real, n) for n in _real.__all__})
model_kernels.linear_backward = _linear_backward
