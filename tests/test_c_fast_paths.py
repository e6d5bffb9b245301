"""Shortcuts inside the C backend give the bits of the plain computation.

The float32 gradient norm in one pass, the residual add fused into the layer
norm, cross-entropy in place, attention read and written in the token layout,
and the causal products that skip masked work, only when it is all finite.

The whole module is skipped when the extension is not built.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("cllm_c", reason="the C extension is not built")

from cllm_c import _lib  # noqa: E402

from tests import c_backend_helpers  # noqa: E402
from tests.c_backend_helpers import F32, _normal  # noqa: E402

# pytest finds a test's fixtures among its module's names
rng = c_backend_helpers.rng
threads = c_backend_helpers.threads


@pytest.mark.parametrize("scale", [1e-40, 1e-20, 1.0, 1e20, 2e37])
def test_float32_norm_in_one_pass_has_the_scaled_norms_bits(rng, scale):
    from cllm_c import gradients

    g = (scale * rng.standard_normal(100_003)).astype(F32)
    g[7] = np.float32(scale) * 1e-3
    amax = float(np.abs(g).max())
    assert math.isfinite(amax) and amax > 0.0
    assert gradients._f32_l2_norm(g) == gradients._l2_norm(g, amax)
    for bad in (np.nan, np.inf):
        h = g.copy()
        h[5] = bad
        got = gradients._f32_l2_norm(h)
        assert math.isnan(got) if bad != bad else got == math.inf
    assert gradients._f32_l2_norm(np.zeros(33, F32)) == 0.0


@pytest.mark.parametrize("c", [1, 7, 17, 33, 65])
@pytest.mark.parametrize("simd", ["scalar", "best"])
def test_fused_residual_layernorm_is_the_add_then_the_norm(rng, c, simd, threads):
    """Same bits as ``x + r`` followed by the plain kernels, both directions."""
    from cllm_c import ffn

    _lib.set_simd(_lib.simd_detected() if simd == "best" else "scalar")
    x, r = _normal(rng, 3, 5, c), _normal(rng, 3, 5, c)
    w, b = _normal(rng, c), _normal(rng, c)
    want_x = x + r
    want_y, want_cache = ffn._layernorm(want_x, w, b, 1e-5)
    stream = x.copy()
    y, cache = ffn._residual_layernorm(stream, r, w, b, 1e-5)
    np.testing.assert_array_equal(stream, want_x)  # the sum, written over x
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(cache.x_hat, want_cache.x_hat)
    np.testing.assert_array_equal(cache.rstd, want_cache.rstd)
    dy, dres = _normal(rng, 3, 5, c), _normal(rng, 3, 5, c)
    dx, dw, db = ffn._layernorm_backward(dy, want_cache)
    acc = dres.copy()
    got, got_dw, got_db = ffn._layernorm_backward(dy, cache, add_to=acc)
    assert got is acc
    np.testing.assert_array_equal(acc, dres + dx)
    np.testing.assert_array_equal(got_dw, dw)
    np.testing.assert_array_equal(got_db, db)
    x64, r64, w64, b64 = (a.astype(np.float64) for a in (x, r, w, b))
    want64, _ = ffn._layernorm(x64 + r64, w64, b64, 1e-5)
    y64, _ = ffn._residual_layernorm(x64, r64, w64, b64, 1e-5)
    np.testing.assert_array_equal(y64, want64)


def test_cross_entropy_in_place_reuses_buffers_bit_for_bit():
    # the model kernels' backward writes dlogits over the cache's probs (one
    # (N, V) buffer fewer); it must give the bits of the out-of-place one
    from cllm_c.losses import _cross_entropy, _cross_entropy_backward

    rng = np.random.default_rng(11)
    logits = rng.standard_normal((37, 53)).astype(np.float32) * 4
    targets = rng.integers(0, 53, 37)
    targets[[3, 20]] = -100
    for dtype in (np.float32, np.float64):
        for smoothing in (0.0, 0.1):
            _, cache = _cross_entropy(
                logits.astype(dtype), targets, -100, smoothing, "mean"
            )
            want = _cross_entropy_backward(np.ones((), dtype), cache)
            assert want is not cache.probs
            got = _cross_entropy_backward(np.ones((), dtype), cache, in_place=True)
            assert got is cache.probs
            np.testing.assert_array_equal(got, want)
            # and the forward writing the probabilities over the logits
            z = logits.astype(dtype)
            loss, plain = _cross_entropy(z, targets, -100, smoothing, "mean")
            buf = z.copy()
            loss2, reused = _cross_entropy(
                buf, targets, -100, smoothing, "mean", in_place=True
            )
            assert reused.probs is buf and loss2 == loss
            np.testing.assert_array_equal(reused.probs, plain.probs)
            np.testing.assert_array_equal(reused.weight, plain.weight)


@pytest.mark.parametrize(
    ("b", "t", "nh", "hs"), [(2, 7, 3, 4), (1, 1, 1, 8), (3, 16, 4, 5)]
)
def test_attention_in_the_token_layout_gives_the_head_layouts_bits(b, t, nh, hs):
    # the model's float32 attention reads q, k, v where the QKV product left
    # them and writes the merged layout (cllm_attention_*_ex); the strides
    # change which floats are read, never the arithmetic
    from cllm_c.attention import _attend, _merge, _mha, _mha_backward, _qkv_pointer
    from cllm_c.ffn import _linear

    rng = np.random.default_rng(b * 100 + t)
    c = nh * hs
    x = rng.standard_normal((b, t, c)).astype(np.float32)
    wq, bq = (rng.standard_normal(s).astype(np.float32) for s in ((3 * c, c), (3 * c,)))
    wp, bp = (rng.standard_normal(s).astype(np.float32) for s in ((c, c), (c,)))
    y, cache, _ = _mha(x, wq, bq, wp, bp, nh, None)
    assert _qkv_pointer(cache.attn) is not None  # the token-layout path ran
    # copies in new memory (ascontiguousarray would keep a (1, 1, 1, HS) view)
    heads = [a.copy() for a in (cache.attn.q, cache.attn.k, cache.attn.v)]
    out, plain = _attend(*heads, True, None)
    np.testing.assert_array_equal(cache.attn.att, plain.att)
    merged = _lib.empty((b, t, c), np.float32)
    _merge(out, merged, 0)
    np.testing.assert_array_equal(y, _linear(merged, wp, bp)[0])
    dy = rng.standard_normal((b, t, c)).astype(np.float32)
    moved = cache._replace(attn=plain)  # contiguous heads: the head-layout path
    assert _qkv_pointer(plain) is None
    for got, want in zip(
        _mha_backward(dy, cache), _mha_backward(dy, moved), strict=True
    ):
        np.testing.assert_array_equal(got, want)


# the finite check reads each row 16 floats at a time, then a masked tail:
# HS 8 is all tail, HS 20 a whole vector (col 0) and a tail (col 19); at
# T = 64 HS 16 and 32 take the AVX-512 blocks (csrc/attention_blocks.c),
# which must fall back to the whole products as the GEMM's causal cuts do
@pytest.mark.parametrize(("hs", "col"), [(8, 0), (20, 0), (20, 19), (16, 15), (32, 17)])
@pytest.mark.parametrize("t", [40, 64, 400])  # 400: K of the products in two slices
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_causal_attention_skips_masked_work_only_when_it_is_all_finite(
    bad, t, hs, col, simd_levels
):
    # The causal products skip the zeros of att and ds past each query's last
    # key (cllm_sgemm_causal): the same bits as the whole product, as long as
    # what those zeros multiply is finite (the plain, non-causal-flagged
    # backward takes the whole products: the bits to compare with). A NaN or
    # inf there must still reach the rows the whole product reaches with it
    # (0 * inf is NaN), as in the reference: the kernels check and fall back.
    lib, ffi, ptr = _lib.lib, _lib.ffi, _lib.ptr
    b, nh, late = 1, 2, 30
    rng = np.random.default_rng(7)
    q, k, v, dout = (_normal(rng, b, nh, t, hs) for _ in range(4))
    heads = ffi.new("cllm_layout[7]", [(nh * t * hs, t * hs, hs)] * 7)

    def forward(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out, att = _lib.empty((b, nh, t, hs), F32), _lib.empty((b, nh, t, t), F32)
        status = lib.cllm_attention_forward_ex(
            ptr(q), ptr(k), ptr(v), heads, b, nh, t, t, hs, 0.35, ptr(out), ptr(att)
        )
        assert status == lib.CLLM_OK
        return out, att

    def backward(dout: np.ndarray, att: np.ndarray, ex: bool) -> list[np.ndarray]:
        grads = [_lib.empty((b, nh, t, hs), F32) for _ in range(3)]
        first = (ptr(dout), ptr(q), ptr(k), ptr(v), ptr(att))
        last = tuple(ptr(g) for g in grads)
        if ex:
            run = lib.cllm_attention_backward_ex
            status = run(*first, heads, b, nh, t, t, hs, 0.35, *last)
        else:
            run = lib.cllm_attention_backward
            status = run(*first, b, nh, t, t, hs, t, 0.35, *last)
        assert status == lib.CLLM_OK
        return grads

    for level in simd_levels:  # each level's finite check
        _lib.set_simd(level)
        clean, att = forward(v)
        for fast, whole in zip(backward(dout, att, True), backward(dout, att, False),
                               strict=True):  # fmt: skip
            assert fast.tobytes() == whole.tobytes()
        v_bad = v.copy()
        v_bad[0, 0, late, col] = bad  # key `late` is hidden from queries < late
        got, _ = forward(v_bad)
        assert np.isnan(got[0, 0, :late, col]).all(), f"0 * inf skipped ({level})"
        np.testing.assert_array_equal(got[0, 1], clean[0, 1])  # the other head
        dout_bad = dout.copy()
        dout_bad[0, 0, 3, col] = bad  # query 3 sees keys <= 3 only
        fast, whole = backward(dout_bad, att, True), backward(dout_bad, att, False)
        assert not np.isfinite(whole[2][0, 0, 4:, col]).any()  # dv: att^T dout
        for f, w in zip(fast, whole, strict=True):
            np.testing.assert_array_equal(f, w)  # NaN where the whole product has NaN
