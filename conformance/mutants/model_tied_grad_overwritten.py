"""Mutant: the C backend whose model kernels' embedding backward overwrites the
token-embedding gradient instead of adding to it, so a tied model loses the LM
head's share of the wte gradient."""

from types import SimpleNamespace

from cllm_c import *  # noqa: F403
from cllm_c import build_info, dtypes, version  # noqa: F401
from cllm_c import model_kernels as _real

name = "mutant-model-tied-grad-overwritten"


def _embedding_backward(dx, cache, *, out):  # type: ignore[no-untyped-def]
    dwte, dwpe = out
    dwte[...] = 0
    return _real.embedding_backward(dx, cache, out=(dwte, dwpe))


model_kernels = SimpleNamespace(**{n: getattr(_real, n) for n in _real.__all__})
model_kernels.embedding_backward = _embedding_backward
