"""Mutant: the C backend whose decoding session (the step of the generation
loop) returns the first sequence's logits for every sequence of the batch, as
a step that forgets the batch stride of its last-position rows would."""

from types import SimpleNamespace

from cllm_c import *  # noqa: F403
from cllm_c import build_info, dtypes, version  # noqa: F401
from cllm_c import model_kernels as _real

name = "mutant-decode-session-row0"


def _decode_session(cfg, flat, kv_caches):  # type: ignore[no-untyped-def]
    session = _real.decode_session(cfg, flat, kv_caches)
    if session is None:
        return None

    def step(ids, pos_offset):  # type: ignore[no-untyped-def]
        logits = session(ids, pos_offset)
        if logits is not None:
            logits[1:] = logits[:1]  # the planted mistake
        return logits

    return step


model_kernels = SimpleNamespace(**{n: getattr(_real, n) for n in _real.__all__})
model_kernels.decode_session = _decode_session
