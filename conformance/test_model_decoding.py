"""Conformance of the whole GPT model's inference paths.

Spec: ``cllm_spec.model`` and ``cllm_spec.generate``. Decoding through KV caches
chunk by chunk and greedily, ``logits="last"``, a backend's fused
``decode_last`` and ``decode_session`` (through ``decode_last`` and
``Decoder``), each equal to one full forward; checked params, causality, and
the one forward that training and inference share.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cllm_spec.errors import ShapeError
from cllm_spec.generate import Decoder, decode_last
from cllm_spec.model import (
    CheckedParams,
    ModelConfig,
    checked_params,
    forward,
    init_kv_caches,
)
from conformance.model_helpers import TINY, make_batch, perturbed_params


# --------------------------------------------------- generation and cache ---
def test_kv_cache_chunks_equal_the_full_forward(
    backend: Any, dtype: np.dtype, rng: np.random.Generator, check: Any
) -> None:
    cfg = ModelConfig(**TINY)
    params = perturbed_params(cfg, rng).astype(dtype)
    ids = rng.integers(0, cfg.vocab_size, (2, cfg.block_size))
    full, _, _ = forward(backend, cfg, params, ids)
    caches = init_kv_caches(backend, cfg, 2, dtype)
    pieces, start = [], 0
    for size in (3, 1, 2, 1):
        chunk, _, cache = forward(
            backend,
            cfg,
            params,
            ids[:, start : start + size],
            kv_caches=caches,
            pos_offset=start,
        )
        assert cache.kv_caches is not None
        caches = cache.kv_caches
        pieces.append(chunk)
        start += size
    assert [kv.length for kv in caches] == [cfg.block_size] * cfg.n_layer
    check.close(np.concatenate(pieces, axis=1), full, output="kv_cache", dtype=dtype)


def test_greedy_decoding_with_kv_cache_follows_the_full_forward(
    backend: Any, dtype: np.dtype, rng: np.random.Generator, check: Any
) -> None:
    cfg = ModelConfig(**TINY, n_hidden=12)
    params = perturbed_params(cfg, rng).astype(dtype)
    seq = rng.integers(0, cfg.vocab_size, (2, 2))
    caches = init_kv_caches(backend, cfg, 2, dtype)
    logits, _, cache = forward(backend, cfg, params, seq, kv_caches=caches)
    while True:
        full, _, _ = forward(backend, cfg, params, seq)
        check.close(logits[:, -1], full[:, -1], output="kv_cache", dtype=dtype)
        nxt = np.argmax(logits[:, -1], axis=-1)
        np.testing.assert_array_equal(nxt, np.argmax(full[:, -1], axis=-1))
        if seq.shape[1] == cfg.block_size:
            break
        assert cache.kv_caches is not None
        logits, _, cache = forward(
            backend,
            cfg,
            params,
            nxt[:, None],
            kv_caches=cache.kv_caches,
            pos_offset=seq.shape[1],
        )
        seq = np.concatenate([seq, nxt[:, None]], axis=1)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_last_position_logits_equal_the_full_forwards_last(
    backend: Any, dtype: np.dtype, rng: np.random.Generator, check: Any, tied: bool
) -> None:
    # logits="last" heads only the position generation samples from; a slice
    # of any other position (the first, or the one before last) fails here
    cfg = ModelConfig(**{**TINY, "tie_embeddings": tied})
    params = perturbed_params(cfg, rng).astype(dtype)
    ids = rng.integers(0, cfg.vocab_size, (3, 5))
    full, _, _ = forward(backend, cfg, params, ids)
    last, loss, cache = forward(backend, cfg, params, ids, logits="last")
    assert last.shape == (3, 1, cfg.vocab_size) and loss is None
    check.close(last, full[:, -1:], output="logits", dtype=dtype)
    # the same through KV caches: a prefill chunk, then decoding steps of B = 3
    caches = init_kv_caches(backend, cfg, 3, dtype)
    start = 0
    for size in (3, 1, 1):
        got, _, cache = forward(
            backend,
            cfg,
            params,
            ids[:, start : start + size],
            kv_caches=caches,
            pos_offset=start,
            logits="last",
        )
        start += size
        assert cache.kv_caches is not None
        caches = cache.kv_caches
        check.close(got, full[:, start - 1 : start], output="kv_cache", dtype=dtype)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_decoding_steps_equal_the_full_forwards_last(
    backend: Any, dtype: np.dtype, rng: np.random.Generator, check: Any, tied: bool
) -> None:
    # generate.decode_last is the decoding path of cllm generate: a backend's
    # fused model_kernels.decode_last (the C backend's whole-model call) runs
    # every step, the prefill included; every row of the batch, every chunk
    # size and the appended caches must match one full forward
    cfg = ModelConfig(**{**TINY, "tie_embeddings": tied})
    params = perturbed_params(cfg, rng).astype(dtype)
    ids = rng.integers(0, cfg.vocab_size, (3, 7))
    full, _, _ = forward(backend, cfg, params, ids)
    caches = init_kv_caches(backend, cfg, 3, dtype)
    start = 0
    for size in (2, 1, 3, 1):
        got, caches = decode_last(
            backend, cfg, params, ids[:, start : start + size], caches, start
        )
        start += size
        assert got.shape == (3, 1, cfg.vocab_size)
        assert all(kv.length == start for kv in caches)
        check.close(got, full[:, start - 1 : start], output="kv_cache", dtype=dtype)
    # the caches hold what a prefill of the whole sequence appends
    fresh = init_kv_caches(backend, cfg, 3, dtype)
    _, _, whole = forward(backend, cfg, params, ids, kv_caches=fresh, logits="last")
    assert whole.kv_caches is not None
    for got_kv, want_kv in zip(caches, whole.kv_caches, strict=True):
        check.close(
            got_kv.k[:, :, :start],
            want_kv.k[:, :, :start],
            output="kv_cache",
            dtype=dtype,
        )
        check.close(
            got_kv.v[:, :, :start],
            want_kv.v[:, :, :start],
            output="kv_cache",
            dtype=dtype,
        )


def test_decoder_sampled_steps_equal_the_full_forwards_last(
    backend: Any, dtype: np.dtype, rng: np.random.Generator, check: Any
) -> None:
    # Decoder.feed_next is the step of cllm generate's loop: a backend's
    # model_kernels.decode_session (the C backend's) runs it over the
    # decoder's own caches with no new checks. Every row and every step, past
    # block_size too (the caches refilled), must match one full forward over
    # the context the decoder holds.
    cfg = ModelConfig(**TINY)
    params = perturbed_params(cfg, rng).astype(dtype)
    seq = rng.integers(0, cfg.vocab_size, (3, cfg.block_size + 4))
    decoder = Decoder(backend, cfg, params, batch=3)
    got = decoder.feed(seq[:, :2])
    for end in range(2, seq.shape[1]):
        context = seq[:, max(0, end - cfg.block_size) : end]
        assert decoder.context.tolist() == context.tolist()
        full, _, _ = forward(backend, cfg, params, context, logits="last")
        check.close(got, full[:, 0], output="kv_cache", dtype=dtype)
        got = decoder.feed_next(seq[:, end])


def test_checked_params_skip_only_the_finiteness_scan(
    backend: Any, rng: np.random.Generator, check: Any
) -> None:
    cfg = ModelConfig(**TINY)
    params = perturbed_params(cfg, rng).astype(np.float32)
    ids = rng.integers(0, cfg.vocab_size, (2, 4))
    want = forward(backend, cfg, params, ids)[0]
    got = forward(backend, cfg, checked_params(backend, cfg, params), ids)[0]
    check.close(got, want.astype(np.float64), output="logits", dtype=np.float32)
    with pytest.raises(ShapeError):  # the cheap checks still run
        forward(backend, cfg, CheckedParams(params[:-1], cfg), ids)


def test_logits_at_a_position_ignore_later_tokens(
    backend: Any, dtype: np.dtype, rng: np.random.Generator, check: Any
) -> None:
    cfg = ModelConfig(**TINY)
    params = perturbed_params(cfg, rng).astype(dtype)
    ids = rng.integers(0, cfg.vocab_size, (2, cfg.block_size))
    s = 3
    changed = ids.copy()
    changed[:, s:] = (
        ids[:, s:] + 1 + rng.integers(0, cfg.vocab_size - 1)
    ) % cfg.vocab_size
    a = forward(backend, cfg, params, ids)[0]
    b = forward(backend, cfg, params, changed)[0]
    check.close(b[:, :s], a[:, :s], output="causality", dtype=dtype)
    # The change is visible from position s on, so the test can see a leak.
    assert np.all(np.abs(b[:, s:] - a[:, s:]).max(axis=-1) > 1e-3)


def test_training_and_inference_share_one_forward(
    backend: Any, dtype: np.dtype, rng: np.random.Generator, check: Any
) -> None:
    cfg = ModelConfig(**TINY)
    params = perturbed_params(cfg, rng).astype(dtype)
    ids, targets = make_batch(cfg, rng, 2, 5)
    with_loss = forward(backend, cfg, params, ids, targets)[0]
    without = forward(backend, cfg, params, ids)[0]
    check.exact(with_loss, without, output="logits")
