"""Mutant: the C backend whose fused decoding step returns the first
sequence's logits for every sequence of the batch, as a whole-model step that
forgets the batch stride of its last-position rows would."""

from types import SimpleNamespace

from cllm_c import *  # noqa: F403
from cllm_c import build_info, dtypes, version  # noqa: F401
from cllm_c import model_kernels as _real

name = "mutant-decode-last-row0"


def _decode_last(cfg, flat, ids, kv_caches, pos_offset):  # type: ignore[no-untyped-def]
    logits = _real.decode_last(cfg, flat, ids, kv_caches, pos_offset)
    if logits is not None:
        logits[1:] = logits[:1]  # the planted mistake
    return logits


model_kernels = SimpleNamespace(**{n: getattr(_real, n) for n in _real.__all__})
model_kernels.decode_last = _decode_last
