"""Mutant: the C backend whose layer-norm backward, asked to add its input
gradient into the residual stream's gradient, overwrites it instead."""

from types import SimpleNamespace

from cllm_c import *  # noqa: F403
from cllm_c import build_info, dtypes, version  # noqa: F401
from cllm_c import model_kernels as _real

name = "mutant-model-norm-grad-overwrites"


def _layernorm_backward(dy, cache, *, out, add_to=None):  # type: ignore[no-untyped-def]
    dx = _real.layernorm_backward(dy, cache, out=out)
    if add_to is None:
        return dx
    add_to[...] = dx
    return add_to


model_kernels = SimpleNamespace(**{n: getattr(_real, n) for n in _real.__all__})
model_kernels.layernorm_backward = _layernorm_backward
