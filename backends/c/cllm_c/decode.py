"""One decoding step of the whole model in one C call (csrc/decode.c).

``decode_last`` is the model kernels' optional fused step (``cllm_spec.model``
documents the capability): ``forward(..., kv_caches=caches, pos_offset=n,
logits="last")`` for float32 params over caches in contiguous buffers; for
n >= 1 bit for bit the per-kernel composition, for a prefill (n = 0) equal up
to rounding (csrc/decode.c says why). The caller
(``cllm_spec.generate.decode_last``) validated params, ids and caches; this
module re-checks what C relies on (dtypes, the caches' buffers and shapes; C
the room left), and returns None where it does not apply, so the caller runs
the per-kernel forward instead. ``decode_session`` is the same step for a
decoder that calls it once per token over the same caches: what does not
change between its calls is resolved once.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence

import numpy as np

from cllm_c._lib import F32, check, empty, ffi, ids64, lib, out_ptr, ptr
from cllm_c.ffn import _KINDS
from cllm_spec.attention import attention_scale
from cllm_spec.errors import ShapeError
from cllm_spec.model import LN_EPS, ModelConfig, param_layout
from cllm_spec.model_params import head_param
from cllm_spec.protocols import KVCache

_OK = lib.CLLM_OK
_GLOBAL = (
    "model.wte.weight",
    "model.wpe.weight",
    "model.ln_f.weight",
    "model.ln_f.bias",
)
#: weights from this size on are asked onto huge pages (csrc/cpu.c,
#: cllm_huge_pages): below it a model's weights span a few 2 MiB pages at most
HUGE_PAGES_MIN_BYTES = 8 << 20
#: the order of enum block_tensor in csrc/decode.c
_BLOCK = (
    "ln_1.weight",
    "ln_1.bias",
    "attn.qkv.weight",
    "attn.qkv.bias",
    "attn.proj.weight",
    "attn.proj.bias",
    "ln_2.weight",
    "ln_2.bias",
    "mlp.fc.weight",
    "mlp.fc.bias",
    "mlp.proj.weight",
    "mlp.proj.bias",
)


@functools.lru_cache(maxsize=16)
def _offsets(cfg: ModelConfig) -> np.ndarray:
    """Where each tensor C reads starts in the flat buffer, in csrc/decode.c's
    order: (5 + 12 L,) int64."""
    at = param_layout(cfg).offsets
    names = [*_GLOBAL, head_param(cfg)]
    for i in range(cfg.n_layer):
        names += [f"model.h.{i}.{n}" for n in _BLOCK]
    out = np.array([at[n] for n in names], dtype=np.int64)
    out.flags.writeable = False
    return out


def _fits(flat: np.ndarray, kv_caches: Sequence[KVCache]) -> bool:
    """Whether the fused step applies: float32 params, and every cache's
    buffers float32, contiguous (C appends into them in place) and of one
    shape (C is given one T_max)."""
    shape = kv_caches[0].k.shape
    return flat.dtype == F32 and all(
        kv.k.shape == shape
        and kv.v.shape == shape
        and kv.k.dtype == F32
        and kv.v.dtype == F32
        and kv.k.flags.c_contiguous
        and kv.v.flags.c_contiguous
        for kv in kv_caches
    )


class DecodeSession:
    """``decode_last`` over one set of caches, with what the C call needs that
    does not change from step to step (the pointers to the params, the
    offsets and every cache's buffers) resolved once: a decoding step of a
    small model costs about as much in Python as in C, and each resolved
    pointer is a few microseconds of it. Holds the buffers it points into."""

    def __init__(
        self, cfg: ModelConfig, flat: np.ndarray, kv_caches: Sequence[KVCache]
    ):
        self._cfg, self._flat, self._caches = cfg, flat, tuple(kv_caches)
        self._batch, _, self._t_max, _ = kv_caches[0].k.shape
        self._params = ptr(flat)
        if flat.nbytes >= HUGE_PAGES_MIN_BYTES:  # each step streams them all
            lib.cllm_huge_pages(self._params, flat.nbytes)
        self._offsets = ffi.from_buffer("int64_t[]", _offsets(cfg))
        self._keys = ffi.new(
            "float *[]", [out_ptr("kv_cache.k", kv.k) for kv in kv_caches]
        )
        self._values = ffi.new(
            "float *[]", [out_ptr("kv_cache.v", kv.v) for kv in kv_caches]
        )
        self._kind = _KINDS[cfg.activation]
        self._scale = attention_scale(cfg.n_embd // cfg.n_head)
        # the scratch of the last call (t, array, pointer), kept for the next
        # one of as many tokens: its contents die with each call
        self._work: tuple[int, np.ndarray, object] | None = None
        # two logits buffers taken in turn (see _logits_out)
        self._outs: list[np.ndarray | None] = [None, None]

    def __call__(self, ids: np.ndarray, pos_offset: int) -> np.ndarray | None:
        """The logits ``(B, 1, V)`` of the last of ``ids: (B, T)``'s positions,
        their keys and values appended at ``pos_offset``; None where the
        step does not fit the caches (C sizes its scratch)."""
        cfg = self._cfg
        b, t = ids.shape
        if b != self._batch:  # C is handed b and would index the caches with it
            raise ShapeError(f"ids: {b} sequences for caches of {self._batch}")
        c, nh, f, v = cfg.n_embd, cfg.n_head, cfg.n_hidden, cfg.vocab_size
        if self._work is None or self._work[0] != t:
            n = lib.cllm_model_decode_work(b, t, nh, c, f, self._t_max)
            if n < 0:
                return None
            work = empty(n, F32)
            self._work = (t, work, ptr(work))
        work_ptr = self._work[2]
        logits = self._logits_out(b, v)
        _, ip = ids64(ids)
        status = lib.cllm_model_decode(
            self._params, self._offsets, ip, b, t, cfg.n_layer, nh, c, f, v,
            cfg.block_size, self._kind, LN_EPS, self._scale, self._keys, self._values,
            self._t_max, pos_offset, work_ptr, ptr(logits),
        )  # fmt: skip
        if status != _OK:
            check(status, "decoding step")
        return logits

    def _logits_out(self, b: int, v: int) -> np.ndarray:
        """A (b, 1, v) buffer no one else holds: the caller may keep the
        logits it was given, but a decoding loop drops each step's when it
        takes the next one's, so two buffers in turn serve it. Each step of a
        large model finds Python's data evicted by its weight stream, and a
        fresh output (``empty``, even recycled) then cost ~30 us.

        The buffers own their memory (``np.empty``, not the recycling
        ``empty``, whose arrays are views of a kept buffer): a view of an
        owner refers to the owner itself, so the owner's reference count
        sees every view a caller kept, such as the loop's ``logits[:, 0]``."""
        for out in self._outs:
            # held by the list, this loop and the call alone: no one else's
            if out is not None and out.shape[0] == b and sys.getrefcount(out) == 3:
                return out
        out = np.empty((b, 1, v), dtype=F32)
        self._outs = [out, self._outs[0]]
        return out


def decode_session(
    cfg: ModelConfig, flat: np.ndarray, kv_caches: Sequence[KVCache]
) -> DecodeSession | None:
    """The fused step over ``kv_caches`` for many calls; None where it does not
    apply (see the module docstring)."""
    return DecodeSession(cfg, flat, kv_caches) if _fits(flat, kv_caches) else None


def decode_last(
    cfg: ModelConfig,
    flat: np.ndarray,
    ids: np.ndarray,
    kv_caches: Sequence[KVCache],
    pos_offset: int,
) -> np.ndarray | None:
    """The logits ``(B, 1, V)`` of the last of ``ids: (B, T)``'s positions,
    the T keys and values appended into the caches' buffers; None where the
    fused step does not apply (see the module docstring)."""
    session = decode_session(cfg, flat, kv_caches)
    return None if session is None else session(ids, pos_offset)
