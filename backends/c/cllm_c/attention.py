"""Attention on the C kernels of ``csrc/attention.c`` (and ``csrc/ffn.c`` for
the projections of multi-head attention).

The math and error contract are in :mod:`cllm_spec.attention`. Multi-head
attention is composed here from the kernels: the QKV projection, a C kernel
that moves heads to (B, NH, T, HS), scaled dot-product attention, the inverse
move and the output projection. Decoding over a nonempty KV cache is one C
call (``cllm_mha_decode``): the projections around ``cllm_attention_decode``,
which appends the new keys and values and attends over the cache where it
lies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cllm_c._lib import F32, arr, check, empty, ffi, kernel, lib, out_ptr, ptr
from cllm_c.ffn import _linear, _linear_backward, _linear_backward_groups
from cllm_spec.attention import (
    attention_scale,
    new_kv_cache,
    reset_kv_cache,
    validate_attention,
    validate_attention_backward,
    validate_kv_cache_append,
    validate_mha,
    validate_mha_backward,
)
from cllm_spec.protocols import AttentionCache, KVCache, LinearCache, MHACache


# ------------------------------------------------- scaled dot-product ------
def _attend(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    causal: bool,
    mask: np.ndarray | None,
    buffers: KVCache | None = None,
) -> tuple[np.ndarray, AttentionCache]:
    """Attention of contiguous q over k, v.

    With ``buffers``, k and v are prefixes of a KV cache's (B, NH, T_max, HS)
    buffers and C reads them in place: each head's rows are T_max apart.
    """
    b, nh, tq, hs = q.shape
    tk = k.shape[2]
    scale = attention_scale(hs)
    out = empty((b, nh, tq, hs), dtype=q.dtype)
    att = empty((b, nh, tq, tk), dtype=q.dtype)
    mp = ffi.NULL
    if mask is not None:
        m8 = np.ascontiguousarray(mask, dtype=np.uint8)  # (B, Tk)
        mp = ffi.from_buffer("uint8_t[]", m8)
    kb, vb = (k, v) if buffers is None else (buffers.k, buffers.v)
    status = kernel("cllm_attention_forward", q.dtype)(
        ptr(q), ptr(kb), ptr(vb), mp, b, nh, tq, tk, hs, kb.shape[2], int(causal),
        scale, ptr(out), ptr(att),
    )  # fmt: skip
    check(status, "attention_forward")
    return out, AttentionCache(q, k, v, att, scale)


def _attend_backward(
    dout: np.ndarray, cache: AttentionCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    g = arr("dout", dout)
    dt = g.dtype
    q = arr("cache.q", cache.q, dt, g.shape)
    b, nh, tq, hs = q.shape
    k = arr("cache.k", cache.k, dt)
    tk = k.shape[2] if k.ndim == 4 else -1
    arr("cache.k", k, shape=(b, nh, tk, hs))
    v = arr("cache.v", cache.v, dt, k.shape)
    att = arr("cache.att", cache.att, dt, (b, nh, tq, tk))
    dq, dk, dv = (empty(a.shape, dtype=q.dtype) for a in (q, k, v))
    status = kernel("cllm_attention_backward", q.dtype)(
        ptr(g),
        ptr(q),
        ptr(k),
        ptr(v),
        ptr(att),
        b,
        nh,
        tq,
        tk,
        hs,
        tk,
        float(cache.scale),
        ptr(dq),
        ptr(dk),
        ptr(dv),
    )
    check(status, "attention_backward")
    return dq, dk, dv


def attention_forward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    *,
    causal: bool = True,
    key_padding_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, AttentionCache]:
    """out = softmax(q k^T / sqrt(HS), masked) v; see ``cllm_spec.attention``."""
    validate_attention(q, k, v, causal, key_padding_mask)
    qc, kc, vc = arr("q", q), arr("k", k), arr("v", v)
    return _attend(qc, kc, vc, bool(causal), key_padding_mask)


def attention_backward(
    dout: np.ndarray, cache: AttentionCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dq, dk, dv) from dout; the derivation is in ``cllm_spec.attention``."""
    validate_attention_backward(dout, cache)
    return _attend_backward(dout, cache)


# ----------------------------------------------------------- KV cache ------
kv_cache_new = new_kv_cache


def _append(cache: KVCache, k: np.ndarray, v: np.ndarray) -> KVCache:
    """The one in-place write of the spec: the buffers are preallocated for it."""
    b, nh, t_max, hs = cache.k.shape
    tn = k.shape[2]
    start = int(cache.length)
    for name, src, dst in (("k", k, cache.k), ("v", v, cache.v)):
        if not dst.flags.c_contiguous:
            dst[:, :, start : start + tn] = src  # a foreign, strided buffer
            continue
        s = arr(name, src)
        write = kernel("cllm_kv_cache_write", s.dtype)
        status = write(
            ptr(s), b, nh, tn, hs, out_ptr(f"cache.{name}", dst), t_max, start
        )
        check(status, "kv_cache_append")
    return KVCache(cache.k, cache.v, start + tn)


def kv_cache_append(cache: KVCache, k: np.ndarray, v: np.ndarray) -> KVCache:
    """Write k, v at [length, length + Tn) and return the longer cache."""
    validate_kv_cache_append(cache, k, v)
    return _append(cache, k, v)


kv_cache_reset = reset_kv_cache


# ------------------------------------------------ multi-head attention -----
def _split(x: np.ndarray, offset: int, c: int, n_head: int) -> np.ndarray:
    b, t, ld = x.shape
    heads = empty((b, n_head, t, c // n_head), dtype=x.dtype)  # (B, NH, T, HS)
    status = kernel("cllm_tokens_to_heads", x.dtype)(
        ptr(x), ld, offset, b, t, n_head, c // n_head, ptr(heads)
    )
    check(status, "split heads")
    return heads


def _merge(heads: np.ndarray, out: np.ndarray, offset: int) -> None:
    b, nh, t, hs = heads.shape
    status = kernel("cllm_heads_to_tokens", heads.dtype)(
        ptr(heads), b, t, nh, hs, ptr(out), out.shape[2], offset
    )
    check(status, "merge heads")


def _decode(
    x: np.ndarray,
    w_qkv: np.ndarray,
    b_qkv: np.ndarray | None,
    w_proj: np.ndarray,
    b_proj: np.ndarray | None,
    kv_cache: KVCache,
    nh: int,
) -> tuple[np.ndarray, MHACache, KVCache]:
    """Multi-head attention of T new tokens over a nonempty contiguous cache.

    One C call (``cllm_mha_decode``): the QKV projection, the append of the
    new keys and values, attention over the cache where it lies (nothing of
    it is copied) and the output projection.
    """
    xc, wq, wp = arr("x", x), arr("w_qkv", w_qkv), arr("w_proj", w_proj)
    bq = None if b_qkv is None else arr("b_qkv", b_qkv)
    bp = None if b_proj is None else arr("b_proj", b_proj)
    b, t, c = x.shape
    start, t_max, hs = int(kv_cache.length), kv_cache.k.shape[2], c // nh
    scale = attention_scale(hs)
    qkv = empty((b, t, 3 * c), dtype=F32)
    merged, y = empty((b, t, c), dtype=F32), empty((b, t, c), dtype=F32)
    att = empty((b, nh, t, start + t), dtype=F32)
    status = lib.cllm_mha_decode(
        ptr(xc), ptr(wq), ptr(bq), ptr(wp), ptr(bp), b, t, nh, hs,
        out_ptr("kv_cache.k", kv_cache.k), out_ptr("kv_cache.v", kv_cache.v),
        t_max, start, scale, ptr(qkv),
        ptr(merged), ptr(att), ptr(y),
    )  # fmt: skip
    check(status, "attention over the KV cache")
    q = qkv[..., :c].reshape(b, t, nh, hs).transpose(0, 2, 1, 3)  # a view
    k, v = (buf[:, :, : start + t] for buf in (kv_cache.k, kv_cache.v))
    attn = AttentionCache(q, k, v, att, scale)
    cache = MHACache(
        LinearCache(x, w_qkv, b_qkv is not None),
        attn,
        LinearCache(merged, w_proj, b_proj is not None),
        nh,
    )
    return y, cache, KVCache(kv_cache.k, kv_cache.v, start + t)


def _in_place(x: np.ndarray, kv_cache: KVCache | None) -> bool:
    """Whether C can decode over ``kv_cache`` in place (float32, contiguous)."""
    return (
        kv_cache is not None
        and kv_cache.length > 0
        and x.dtype == F32
        and kv_cache.k.flags.c_contiguous
        and kv_cache.v.flags.c_contiguous
    )


def _mha(
    x: np.ndarray,
    w_qkv: np.ndarray,
    b_qkv: np.ndarray | None,
    w_proj: np.ndarray,
    b_proj: np.ndarray | None,
    n_head: int,
    kv_cache: KVCache | None,
) -> tuple[np.ndarray, MHACache, KVCache | None]:
    """:func:`mha_forward` on inputs the caller has validated."""
    nh = int(n_head)
    if _in_place(x, kv_cache):
        assert kv_cache is not None
        return _decode(x, w_qkv, b_qkv, w_proj, b_proj, kv_cache, nh)
    b, t, c = x.shape
    qkv, qkv_cache = _linear(x, w_qkv, b_qkv)  # (B, T, 3C)
    if kv_cache is None and x.dtype == F32:
        return _mha_in_tokens(qkv, qkv_cache, w_proj, b_proj, nh)
    q, k, v = (_split(qkv, i * c, c, nh) for i in range(3))  # (B, NH, T, HS) each
    new_cache, buffers = None, None
    if kv_cache is not None:
        new_cache = _append(kv_cache, k, v)
        if kv_cache.length > 0:
            # attend over the whole cached prefix (B, NH, Tk, HS)
            k = new_cache.k[:, :, : new_cache.length]
            v = new_cache.v[:, :, : new_cache.length]
            if new_cache.k.flags.c_contiguous and new_cache.v.flags.c_contiguous:
                buffers = new_cache  # read in place
            else:
                k, v = np.ascontiguousarray(k), np.ascontiguousarray(v)
    a, attn_cache = _attend(q, k, v, True, None, buffers)  # (B, NH, T, HS)
    merged = empty((b, t, c), dtype=x.dtype)
    _merge(a, merged, 0)  # (B, T, C)
    y, proj_cache = _linear(merged, w_proj, b_proj)  # (B, T, C)
    return y, MHACache(qkv_cache, attn_cache, proj_cache, nh), new_cache


# ------------------------------ attention over the token layout (float32) ----
def _token_layouts(t: int, c: int, nh: int) -> tuple[Any, Any]:
    """cllm_layout values of a (B, T, 3C) QKV block and of a (B, T, C) array
    (csrc attention.c, cllm_attention_forward_ex)."""
    hs = c // nh
    return (t * 3 * c, hs, 3 * c), (t * c, hs, c)


def _mha_in_tokens(
    qkv: np.ndarray,
    qkv_cache: LinearCache,
    w_proj: np.ndarray,
    b_proj: np.ndarray | None,
    nh: int,
) -> tuple[np.ndarray, MHACache, None]:
    """Causal attention reading q, k and v where the QKV product left them and
    writing the merged (B, T, C) layout: no copies between layouts (they were
    ~5% of a default training step), the same bits as through them. The
    cache's q, k, v are strided (B, NH, T, HS) views of ``qkv``."""
    b, t, c3 = qkv.shape
    c, hs = c3 // 3, c3 // 3 // nh
    scale = attention_scale(hs)
    merged = empty((b, t, c), dtype=F32)
    att = empty((b, nh, t, t), dtype=F32)
    fused, flat = _token_layouts(t, c, nh)
    base = ptr(qkv)
    status = lib.cllm_attention_forward_ex(
        base, base + c, base + 2 * c, ffi.new("cllm_layout[4]", [fused] * 3 + [flat]),
        b, nh, t, t, hs, scale, ptr(merged), ptr(att),
    )  # fmt: skip
    check(status, "attention_forward")
    heads = qkv.reshape(b, t, 3, nh, hs)
    q, k, v = (heads[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # views
    y, proj_cache = _linear(merged, w_proj, b_proj)  # (B, T, C)
    attn = AttentionCache(q, k, v, att, scale)
    return y, MHACache(qkv_cache, attn, proj_cache, nh), None


def _qkv_pointer(cache: AttentionCache) -> Any:
    """A ``float *`` to the (B, T, 3C) QKV block whose column blocks
    ``cache.q, k, v`` are (as :func:`_mha_in_tokens` makes them), or None for
    any other cache. Every float C then reads belongs to q, k or v: each view
    lies within its buffer, and the three are checked to tile the block."""
    q, k, v, att = cache.q, cache.k, cache.v, cache.att
    if not all(type(a) is np.ndarray and a.dtype == F32 for a in (q, k, v, att)):
        return None
    if q.ndim != 4 or q.shape != k.shape or q.shape != v.shape:
        return None
    b, nh, t, hs = q.shape
    c = nh * hs
    want = (t * 3 * c * 4, hs * 4, 3 * c * 4, 4)
    if q.strides != want or k.strides != want or v.strides != want:
        return None
    start = q.__array_interface__["data"][0]
    if (
        k.__array_interface__["data"][0] != start + 4 * c
        or v.__array_interface__["data"][0] != start + 8 * c
        or att.shape != (b, nh, t, t)
        or not att.flags.c_contiguous
    ):
        return None
    return ffi.cast("float *", start)


def mha_forward(
    x: np.ndarray,
    w_qkv: np.ndarray,
    b_qkv: np.ndarray | None,
    w_proj: np.ndarray,
    b_proj: np.ndarray | None,
    *,
    n_head: int,
    kv_cache: KVCache | None = None,
) -> tuple[np.ndarray, MHACache, KVCache | None]:
    """Causal multi-head self-attention with fused QKV and output projection."""
    validate_mha(x, w_qkv, b_qkv, w_proj, b_proj, n_head, kv_cache)
    return _mha(x, w_qkv, b_qkv, w_proj, b_proj, n_head, kv_cache)


def mha_backward(
    dy: np.ndarray, cache: MHACache
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
    """(dx, dw_qkv, db_qkv, dw_proj, db_proj); bias grads are None without a bias."""
    validate_mha_backward(dy, cache)
    return _mha_backward(dy, cache)


def _mha_backward(
    dy: np.ndarray, cache: MHACache, out: tuple[np.ndarray, ...] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
    """``out``: (dw_qkv, db_qkv, dw_proj, db_proj) to write into, or None."""
    dw_qkv, db_qkv, dw_proj, db_proj = out or (None,) * 4
    da, dw_proj, db_proj = _linear_backward(dy, cache.proj, dw_proj, db_proj)
    dqkv = _attention_dqkv(da, cache)
    dx, dw_qkv, db_qkv = _linear_backward(dqkv, cache.qkv, dw_qkv, db_qkv)
    return dx, dw_qkv, db_qkv, dw_proj, db_proj


def _mha_backward_groups(
    dy: np.ndarray,
    cache: MHACache,
    groups: Sequence[tuple[int, int]],
    outs: Sequence[tuple[np.ndarray, ...]],
) -> np.ndarray:
    """:func:`_mha_backward` with each group's parameter gradients (batch rows
    ``groups[i]``) into ``outs[i] = (dw_qkv, db_qkv, dw_proj, db_proj)``; the
    attention itself is per sequence, so it runs once for every row."""
    da = _linear_backward_groups(dy, cache.proj, groups, [(o[2], o[3]) for o in outs])
    dqkv = _attention_dqkv(da, cache)
    return _linear_backward_groups(
        dqkv, cache.qkv, groups, [(o[0], o[1]) for o in outs]
    )


def _attention_dqkv(da: np.ndarray, cache: MHACache) -> np.ndarray:
    """The attention's backward from the merged heads' gradient ``da: (B, T,
    C)`` to the fused QKV product's output gradient ``(B, T, 3C)``."""
    nh = int(cache.n_head)
    b, t, c = da.shape
    dqkv = empty((b, t, 3 * c), dtype=da.dtype)  # (B, T, 3C)
    base = _qkv_pointer(cache.attn)
    if (
        base is not None
        and da.dtype == F32
        and cache.attn.q.shape == (b, nh, t, c // nh)
    ):
        # the token layout of _mha_in_tokens: read and write it in place
        fused, flat = _token_layouts(t, c, nh)
        dp = ptr(dqkv)
        status = lib.cllm_attention_backward_ex(
            ptr(arr("da", da)), base, base + c, base + 2 * c, ptr(cache.attn.att),
            ffi.new("cllm_layout[7]", [flat] + [fused] * 6), b, nh, t, t, c // nh,
            float(cache.attn.scale), dp, dp + c, dp + 2 * c,
        )  # fmt: skip
        check(status, "attention_backward")
    else:
        grads = _attend_backward(_split(da, 0, c, nh), cache.attn)
        for i, g in enumerate(grads):
            _merge(g, dqkv, i * c)
    return dqkv
