"""Mutant: the C backend whose model kernels write a layer norm's weight
gradient into the bias view and the bias gradient into the weight view (the
same shapes, so only the values can tell)."""

from types import SimpleNamespace

from cllm_c import *  # noqa: F403
from cllm_c import build_info, dtypes, version  # noqa: F401
from cllm_c import model_kernels as _real

name = "mutant-model-ln-grads-swapped"


def _layernorm_backward(dy, cache, *, out):  # type: ignore[no-untyped-def]
    dweight, dbias = out
    return _real.layernorm_backward(dy, cache, out=(dbias, dweight))


model_kernels = SimpleNamespace(**{n: getattr(_real, n) for n in _real.__all__})
model_kernels.layernorm_backward = _layernorm_backward
