"""Mutant: decoding over a nonempty KV cache reads the first sequence's cached
keys and values for every sequence of the batch, as an in-place decoding
kernel that forgets the batch stride of the cache would."""

from cllm_numpy.attention import mha_forward as _reference

from cllm_spec.protocols import KVCache
from conformance.mutants._base import *  # noqa: F403

name = "mutant-kv-decode-batch-row0"


def mha_forward(x, w_qkv, b_qkv, w_proj, b_proj, *, n_head, kv_cache=None):  # type: ignore[no-untyped-def]
    if kv_cache is not None and kv_cache.length > 0:
        n = kv_cache.length
        k, v = kv_cache.k.copy(), kv_cache.v.copy()
        k[:, :, :n], v[:, :, :n] = k[:1, :, :n], v[:1, :, :n]  # the planted mistake
        y, cache, new = _reference(
            x, w_qkv, b_qkv, w_proj, b_proj, n_head=n_head,
            kv_cache=KVCache(k, v, n),
        )  # fmt: skip
        # the caller's buffers still receive the new rows at [n, n + T)
        t = x.shape[1]
        kv_cache.k[:, :, n : n + t] = new.k[:, :, n : n + t]
        kv_cache.v[:, :, n : n + t] = new.v[:, :, n : n + t]
        return y, cache, KVCache(kv_cache.k, kv_cache.v, n + t)
    return _reference(x, w_qkv, b_qkv, w_proj, b_proj, n_head=n_head, kv_cache=kv_cache)
