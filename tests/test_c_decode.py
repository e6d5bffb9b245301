"""The C backend's fused decoding step (csrc/decode.c, cllm_c/decode.py).

``model_kernels.decode_last`` runs the whole model for the new tokens in one
C call; it must give the bits of the per-kernel forward it replaces (the same
C entry points in the same order), append the same keys and values, and step
aside (None) where it does not apply. The conformance suite checks the
decoding path against the float64 oracle (conformance/test_model_decoding.py); this
file checks that the fused step is the same function as the unfused one.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

cllm_c = pytest.importorskip("cllm_c", reason="the C extension is not built")

from cllm_c.decode import decode_last as fused_decode_last  # noqa: E402
from cllm_c.decode import decode_session  # noqa: E402

from cllm_spec.errors import IdRangeError, ReadOnlyError, ShapeError  # noqa: E402
from cllm_spec.generate import Decoder, decode_last  # noqa: E402
from cllm_spec.model import ModelConfig, forward, init_kv_caches, init_params  # noqa: E402
from cllm_spec.protocols import KVCache  # noqa: E402
from cllm_spec.tolerances import tolerance  # noqa: E402

CONFIGS = [
    ModelConfig(13, 8, 2, 2, 9, n_hidden=12, activation="gelu"),
    ModelConfig(29, 12, 3, 3, 11, activation="relu", tie_embeddings=False),
    ModelConfig(40, 16, 1, 1, 8, activation="gelu_tanh"),
]


def _params(cfg: ModelConfig, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = init_params(cfg, rng, np.float64)
    return (p + 0.3 * rng.standard_normal(p.shape)).astype(np.float32)


def _copy(caches: tuple[KVCache, ...]) -> tuple[KVCache, ...]:
    return tuple(KVCache(kv.k.copy(), kv.v.copy(), kv.length) for kv in caches)


@pytest.mark.parametrize("cfg", CONFIGS, ids=["gelu", "untied-relu", "one-head"])
@pytest.mark.parametrize("batch", [1, 3])
def test_fused_step_is_the_per_kernel_forward_bit_for_bit(cfg, batch):
    params = _params(cfg, 1)
    rng = np.random.default_rng(2)
    ids = rng.integers(0, cfg.vocab_size, (batch, cfg.block_size))
    caches = init_kv_caches(cllm_c, cfg, batch, np.float32)
    _, _, cache = forward(
        cllm_c, cfg, params, ids[:, :3], kv_caches=caches, logits="last"
    )  # the prefill: an empty cache is the per-kernel path's
    fused = cache.kv_caches
    plain = _copy(fused)
    start = 3
    for size in (1, 2, 1, 1):  # one token, a chunk of two, then one each
        chunk = ids[:, start : start + size]
        want, _, out = forward(
            cllm_c, cfg, params, chunk, kv_caches=plain, pos_offset=start,
            logits="last",
        )  # fmt: skip
        got = fused_decode_last(cfg, params, chunk, fused, start)
        assert got is not None, "the fused step must apply here"
        np.testing.assert_array_equal(got, want)
        start += size
        assert out.kv_caches is not None
        plain = out.kv_caches
        fused = tuple(KVCache(kv.k, kv.v, start) for kv in fused)
        for a, b in zip(fused, plain, strict=True):
            np.testing.assert_array_equal(a.k[:, :, :start], b.k[:, :, :start])
            np.testing.assert_array_equal(a.v[:, :, :start], b.v[:, :, :start])


def test_the_decoding_path_goes_through_the_fused_step(monkeypatch):
    cfg = CONFIGS[0]
    params = _params(cfg, 3)
    calls = []

    def spy(*args):
        calls.append(args[-1])
        return fused_decode_last(*args)

    monkeypatch.setattr(cllm_c.model_kernels, "decode_last", spy)
    caches = init_kv_caches(cllm_c, cfg, 2, np.float32)
    ids = np.array([[1, 2], [3, 4]])
    _, caches = decode_last(cllm_c, cfg, params, ids, caches, 0)  # prefill
    logits, caches = decode_last(cllm_c, cfg, params, ids[:, :1], caches, 2)
    assert calls == [0, 2] and logits.shape == (2, 1, cfg.vocab_size)
    assert all(kv.length == 3 for kv in caches)


def test_fused_prefill_matches_the_per_kernel_prefill():
    # an empty cache: attention on the decoding kernel, not the GEMM-based one,
    # so equal up to rounding (the model's float32 tolerance), not bit for bit
    cfg = CONFIGS[1]
    params = _params(cfg, 6)
    ids = np.random.default_rng(7).integers(0, cfg.vocab_size, (2, 6))
    plain = init_kv_caches(cllm_c, cfg, 2, np.float32)
    want, _, out = forward(cllm_c, cfg, params, ids, kv_caches=plain, logits="last")
    fused = init_kv_caches(cllm_c, cfg, 2, np.float32)
    got = fused_decode_last(cfg, params, ids, fused, 0)
    assert got is not None
    tol = tolerance("model", "kv_cache", np.float32)
    np.testing.assert_allclose(got, want, rtol=tol.rtol, atol=tol.atol)
    assert out.kv_caches is not None
    for a, b in zip(fused, out.kv_caches, strict=True):
        np.testing.assert_allclose(
            a.k[:, :, :6], b.k[:, :, :6], rtol=tol.rtol, atol=tol.atol
        )
        np.testing.assert_allclose(
            a.v[:, :, :6], b.v[:, :, :6], rtol=tol.rtol, atol=tol.atol
        )


def test_fused_step_steps_aside_where_it_does_not_apply():
    cfg = CONFIGS[0]
    params = _params(cfg, 4)
    ids = np.array([[5]])
    empty = init_kv_caches(cllm_c, cfg, 1, np.float32)
    held = tuple(KVCache(kv.k, kv.v, 1) for kv in empty)
    as64 = tuple(
        KVCache(kv.k.astype(np.float64), kv.v.astype(np.float64), 1) for kv in held
    )
    assert fused_decode_last(cfg, params.astype(np.float64), ids, as64, 1) is None
    strided = tuple(
        KVCache(np.asfortranarray(kv.k), np.asfortranarray(kv.v), 1) for kv in held
    )
    assert fused_decode_last(cfg, params, ids, strided, 1) is None
    # caches of unequal T_max: C is given one T_max, so this is not its case
    wider = (KVCache(*(np.zeros((1, 2, 12, 4), np.float32),) * 2, 1), *held[1:])
    assert fused_decode_last(cfg, params, ids, wider, 1) is None


def test_fused_step_never_writes_a_read_only_cache():
    cfg = CONFIGS[0]
    params = _params(cfg, 5)
    caches = init_kv_caches(cllm_c, cfg, 1, np.float32)
    _, caches = decode_last(cllm_c, cfg, params, np.array([[1]]), caches, 0)
    frozen = _copy(caches)
    frozen[1].v.flags.writeable = False
    before = frozen[1].v.copy()
    with pytest.raises(ReadOnlyError):
        decode_last(cllm_c, cfg, params, np.array([[2]]), frozen, 1)
    np.testing.assert_array_equal(frozen[1].v, before)


def test_decoder_steps_through_the_session_bit_for_bit():
    """Decoder.feed_next runs model_kernels.decode_session over the
    decoder's own caches: the logits of the checked path (feed), slides
    included, from one session opened per window."""
    cfg = CONFIGS[1]  # block_size 11
    params = _params(cfg, 8)
    toks = np.random.default_rng(9).integers(0, cfg.vocab_size, (2, 16))
    plain = Decoder(cllm_c, cfg, params, batch=2)
    sampled = Decoder(cllm_c, cfg, params, batch=2)
    assert sampled._session is not None, "the C backend offers a session"
    np.testing.assert_array_equal(sampled.feed(toks[:, :4]), plain.feed(toks[:, :4]))
    for i in range(4, toks.shape[1]):
        want = plain.feed(toks[:, i : i + 1])
        np.testing.assert_array_equal(sampled.feed_next(toks[:, i]), want)
        for a, b in zip(sampled.caches, plain.caches, strict=True):
            assert a.length == b.length
            np.testing.assert_array_equal(a.k[:, :, : a.length], b.k[:, :, : b.length])


def test_session_refuses_another_batch_and_foreign_ids():
    cfg = CONFIGS[0]
    params = _params(cfg, 10)
    caches = init_kv_caches(cllm_c, cfg, 2, np.float32)
    session = decode_session(cfg, params, caches)
    assert session is not None
    with pytest.raises(ShapeError):  # C would index two caches' rows with 3
        session(np.array([[1], [2], [3]]), 0)
    with pytest.raises(IdRangeError):
        session(np.array([[1], [cfg.vocab_size]]), 0)
    got = session(np.array([[1], [2]]), 0)
    fresh = init_kv_caches(cllm_c, cfg, 2, np.float32)
    want = fused_decode_last(cfg, params, np.array([[1], [2]]), fresh, 0)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("vocab", [13, 20000], ids=["small", "recyclable-size"])
def test_session_never_reuses_logits_a_caller_still_holds(vocab):
    """A session hands out its two logits buffers in turn, each only while no
    one else holds it: every step's logits that are kept, or a view of them,
    stay as they were (at 20,000 ids an output is of the size the recycling
    allocator hands out as views of a kept buffer)."""
    cfg = dataclasses.replace(CONFIGS[0], vocab_size=vocab)
    params = _params(cfg, 11)
    session = decode_session(cfg, params, init_kv_caches(cllm_c, cfg, 1, np.float32))
    assert session is not None
    kept, copies = [], []
    for i in range(5):
        logits = session(np.array([[i + 1]]), i)
        if i % 2 == 0:  # a view keeps its buffer alive too
            kept.append(logits[:, 0])
            copies.append(logits[:, 0].copy())
        del logits
    for got, want in zip(kept, copies, strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_decoding_loop_takes_its_logits_from_two_buffers(monkeypatch):
    """A loop that drops each step's logits when it takes the next one's
    allocates no output after its first two steps."""
    import cllm_c.decode

    cfg = CONFIGS[1]
    params = _params(cfg, 12)
    session = decode_session(cfg, params, init_kv_caches(cllm_c, cfg, 2, np.float32))
    assert session is not None
    made = []
    real_empty = np.empty

    def counted(shape, *args, **kwargs):
        made.append(shape)
        return real_empty(shape, *args, **kwargs)

    monkeypatch.setattr(cllm_c.decode.np, "empty", counted)  # numpy's, for the test
    logits = None
    for i in range(8):
        logits = session(np.array([[i], [i + 1]]), i)[:, 0]
    assert made.count((2, 1, cfg.vocab_size)) == 2, made
    assert logits is not None
