"""Mutant: kv_cache_append writes one position past the cache's length."""

from cllm_spec.attention import validate_kv_cache_append
from cllm_spec.protocols import KVCache
from conformance.mutants._base import *  # noqa: F403

name = "mutant-kv-cache-late"


def kv_cache_append(cache, k, v):  # type: ignore[no-untyped-def]
    validate_kv_cache_append(cache, k, v)
    start = cache.length + 1  # the planted off-by-one
    end = min(start + k.shape[2], cache.k.shape[2])
    cache.k[:, :, start:end] = k[:, :, : end - start]
    cache.v[:, :, start:end] = v[:, :, : end - start]
    return KVCache(cache.k, cache.v, cache.length + k.shape[2])
