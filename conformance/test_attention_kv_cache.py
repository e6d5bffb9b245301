"""Conformance of the KV cache and of decoding through it.

Spec: ``cllm_spec.attention``. ``kv_cache_new``, ``kv_cache_append`` and
``kv_cache_reset``, then ``mha_forward`` with a cache: decoding chunk by chunk
equals the full forward. ``test_seedNN_*`` are the equivalents of test NN of
the original ``tests/unit/test_attention.c``; ``test_bug12_*`` are regressions
for its KV cache, which overwrote fresh keys.
"""

from __future__ import annotations

import numpy as np
import pytest

from cllm_spec.errors import CacheFullError, Unsupported
from cllm_spec.protocols import KVCache
from conformance.attention_helpers import mha_params, qkv_inputs, up
from conformance.strategies import normal


def test_seed01_kv_cache_new_has_the_requested_shape(backend, dtype):
    # original layer_init(4, 64): the sizes are stored and the buffers exist
    cache = backend.kv_cache_new(2, 4, 16, 64, dtype)
    assert isinstance(cache, KVCache) and cache.length == 0
    for buf in (cache.k, cache.v):
        assert buf.shape == (2, 4, 16, 64) and buf.dtype == dtype
        assert not np.any(buf)
    assert not np.shares_memory(cache.k, cache.v)


def test_seed02_kv_cache_reset_empties_and_keeps_the_buffers(backend, dtype, rng):
    # original layer_free (pointers NULL): here the release is a reset to length 0
    cache = backend.kv_cache_new(1, 2, 5, 3, dtype)
    cache = backend.kv_cache_append(cache, *qkv_inputs(rng, (1, 2, 4, 3), 4, dtype)[1:])
    empty = backend.kv_cache_reset(cache)
    assert empty.length == 0
    assert empty.k is cache.k and empty.v is cache.v
    k = normal(rng, (1, 2, 5, 3), dtype)
    full = backend.kv_cache_append(empty, k, k)  # the whole capacity is free again
    assert full.length == 5


def test_kv_cache_append_writes_at_length(backend, dtype, rng, check):
    cache = backend.kv_cache_new(2, 2, 6, 3, dtype)
    k1, v1 = normal(rng, (2, 2, 2, 3), dtype), normal(rng, (2, 2, 2, 3), dtype)
    k2, v2 = normal(rng, (2, 2, 3, 3), dtype), normal(rng, (2, 2, 3, 3), dtype)
    c1 = backend.kv_cache_append(cache, k1, v1)
    snapshot = c1.k[:, :, :2].copy(), c1.v[:, :, :2].copy()
    c2 = backend.kv_cache_append(c1, k2, v2)
    assert (cache.length, c1.length, c2.length) == (0, 2, 5)
    assert np.shares_memory(c2.k, cache.k) and np.shares_memory(c2.v, cache.v)
    check.exact(c2.k[:, :, :5], np.concatenate([k1, k2], axis=2), output="kv.k")
    check.exact(c2.v[:, :, :5], np.concatenate([v1, v2], axis=2), output="kv.v")
    # the old tuple still describes a valid prefix
    check.exact(c1.k[:, :, : c1.length], snapshot[0], output="prefix.k")
    check.exact(c1.v[:, :, : c1.length], snapshot[1], output="prefix.v")


def test_kv_cache_full_raises_and_leaves_the_cache_unchanged(
    backend, dtype, rng, check
):
    cache = backend.kv_cache_new(1, 2, 4, 3, dtype)
    cache = backend.kv_cache_append(cache, *[normal(rng, (1, 2, 3, 3), dtype)] * 2)
    before = cache.k.copy(), cache.v.copy()
    with pytest.raises(CacheFullError):
        backend.kv_cache_append(cache, *[normal(rng, (1, 2, 2, 3), dtype)] * 2)
    assert cache.length == 3
    check.exact(cache.k, before[0], output="unchanged.k")
    check.exact(cache.v, before[1], output="unchanged.v")
    full = backend.kv_cache_append(cache, *[normal(rng, (1, 2, 1, 3), dtype)] * 2)
    assert full.length == 4  # filling it exactly is fine
    with pytest.raises(CacheFullError):
        backend.kv_cache_append(full, *[normal(rng, (1, 2, 1, 3), dtype)] * 2)


def decode(backend, x, params, n_head, chunks, cache):
    """Run mha_forward chunk by chunk through ``cache``; return outputs and cache."""
    outs, start = [], 0
    for n in chunks:
        y, _, cache = backend.mha_forward(
            x[:, start : start + n], *params, n_head=n_head, kv_cache=cache
        )
        start += n
        assert cache.length == start
        outs.append(y)
    return np.concatenate(outs, axis=1), cache


@pytest.mark.parametrize(
    "chunks", [(1, 1, 1, 1, 1, 1, 1), (3, 1), (2, 3, 2), (7,), (1, 6), (4, 1, 1, 1)]
)
def test_bug12_kv_decoding_equals_the_full_forward(
    backend, dtype, oracle, rng, check, chunks
):
    t, c, n_head = sum(chunks), 8, 2
    x = normal(rng, (2, t, c), dtype)
    params = mha_params(rng, c, dtype)
    want, _, _ = oracle.mha_forward(*up(x, *params), n_head=n_head)
    cache = backend.kv_cache_new(2, n_head, t + 2, c // n_head, dtype)
    got, cache = decode(backend, x, params, n_head, chunks, cache)
    check.close(got, want, output="kv_decoding", dtype=dtype)
    # the cache holds every position's keys: the k block of x w_qkv^T + b
    x64, w64, b64 = up(x, params[0], params[1])
    k_full = (x64 @ w64[c : 2 * c].T + b64[c : 2 * c]).reshape(2, t, n_head, -1)
    check.close(
        cache.k[:, :, :t], k_full.transpose(0, 2, 1, 3), output="kv_cache", dtype=dtype
    )


@pytest.mark.parametrize("hs", [1, 7, 8, 9, 17, 33])
def test_kv_decoding_of_a_batch_equals_the_full_forward_over_head_sizes(
    backend, dtype, oracle, rng, check, hs
):
    # decoding steps attend over a nonempty cache (a backend may do that in
    # place, straight from the QKV projection): three sequences, head sizes
    # around every SIMD width, a chunk of 2 and single tokens after a prefill
    n_head, chunks = 2, (3, 1, 2, 1, 1)
    t, c = sum(chunks), 2 * hs
    x = normal(rng, (3, t, c), dtype)
    params = mha_params(rng, c, dtype)
    want, _, _ = oracle.mha_forward(*up(x, *params), n_head=n_head)
    cache = backend.kv_cache_new(3, n_head, t + 1, hs, dtype)
    got, cache = decode(backend, x, params, n_head, chunks, cache)
    check.close(got, want, output="kv_decoding", dtype=dtype)
    x64, w64, b64 = up(x, params[0], params[1])
    v_full = (x64 @ w64[2 * c :].T + b64[2 * c :]).reshape(3, t, n_head, hs)
    check.close(
        cache.v[:, :, :t], v_full.transpose(0, 2, 1, 3), output="kv_cache", dtype=dtype
    )


def test_seed05_with_cache_second_call_equals_full_forward(
    backend, dtype, oracle, rng, check
):
    # original with_cache (2 heads, HS 32, seq 16): a second call through the cache
    t, c, n_head = 16, 64, 2
    x = normal(rng, (1, t, c), dtype)
    params = mha_params(rng, c, dtype)
    want, _, _ = oracle.mha_forward(*up(x, *params), n_head=n_head)
    cache = backend.kv_cache_new(1, n_head, t, c // n_head, dtype)
    got, _ = decode(backend, x, params, n_head, (8, 8), cache)
    check.close(got, want, output="kv_decoding", dtype=dtype)


def test_bug12_first_token_through_a_zero_cache_uses_its_own_keys(
    backend, dtype, rng, check
):
    # the original replaced fresh K/V by the (zero) cache contents; a zero-initialised
    # cache must not matter: the first decoded token equals the uncached T = 1 pass
    x = normal(rng, (2, 1, 6), dtype)
    params = mha_params(rng, 6, dtype)
    plain, _, _ = backend.mha_forward(x, *params, n_head=3)
    cache = backend.kv_cache_new(2, 3, 4, 2, dtype)
    cached, _, cache = backend.mha_forward(x, *params, n_head=3, kv_cache=cache)
    check.close(cached, plain.astype(np.float64), output="kv_decoding", dtype=dtype)
    assert np.any(cache.k[:, :, 0] != 0.0)


def test_mha_with_a_full_cache_raises_and_leaves_it_unchanged(
    backend, dtype, rng, check
):
    x = normal(rng, (1, 5, 4), dtype)
    params = mha_params(rng, 4, dtype)
    cache = backend.kv_cache_new(1, 2, 4, 2, dtype)
    _, cache = decode(backend, x[:, :3], params, 2, (3,), cache)
    before = cache.k.copy(), cache.v.copy()
    with pytest.raises(CacheFullError):
        backend.mha_forward(x[:, 3:], *params, n_head=2, kv_cache=cache)
    assert cache.length == 3
    check.exact(cache.k, before[0], output="unchanged.k")
    check.exact(cache.v, before[1], output="unchanged.v")


def test_seed13_kv_cache_reuse_after_reset_reproduces_decoding(
    backend, dtype, rng, check
):
    # original memory_cleanup: here, a cache emptied by reset is as good as new
    x, x_other = normal(rng, (1, 4, 6), dtype), normal(rng, (1, 3, 6), dtype)
    params = mha_params(rng, 6, dtype)
    fresh = backend.kv_cache_new(1, 2, 4, 3, dtype)
    first, _ = decode(backend, x, params, 2, (1, 1, 1, 1), fresh)
    used = backend.kv_cache_new(1, 2, 4, 3, dtype)
    _, used = decode(backend, x_other, params, 2, (3,), used)
    again, _ = decode(backend, x, params, 2, (1, 1, 1, 1), backend.kv_cache_reset(used))
    check.exact(again, first, output="after_reset")


def test_mha_backward_after_cached_prefix_is_unsupported(backend, dtype, rng):
    x = normal(rng, (1, 4, 4), dtype)
    params = mha_params(rng, 4, dtype)
    cache = backend.kv_cache_new(1, 2, 4, 2, dtype)
    _, _, cache = backend.mha_forward(x[:, :3], *params, n_head=2, kv_cache=cache)
    y, mcache, _ = backend.mha_forward(x[:, 3:], *params, n_head=2, kv_cache=cache)
    with pytest.raises(Unsupported):
        backend.mha_backward(np.ones_like(y), mcache)


def test_mha_backward_through_an_empty_cache_equals_training(
    backend, dtype, rng, check
):
    # an empty cache's forward is the training forward, so its backward is allowed
    x = normal(rng, (1, 3, 4), dtype)
    params = mha_params(rng, 4, dtype)
    dy = normal(rng, x.shape, dtype)
    _, train_cache, _ = backend.mha_forward(x, *params, n_head=2)
    _, kv_cache_run, _ = backend.mha_forward(
        x, *params, n_head=2, kv_cache=backend.kv_cache_new(1, 2, 3, 2, dtype)
    )
    for got, want in zip(
        backend.mha_backward(dy, kv_cache_run),
        backend.mha_backward(dy, train_cache),
        strict=True,
    ):
        check.exact(got, want, output="empty_cache_backward")
