"""Attention in NumPy; the math and the error contract are in ``cllm_spec.attention``.

The QKV and output projections are written here as plain matmuls (the same
formula as the linear layer of ``cllm_spec.ffn``), so attention depends on no
other component's code.
"""

from __future__ import annotations

import numpy as np

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
def _visible(
    tq: int, tk: int, causal: bool, key_padding_mask: np.ndarray | None
) -> np.ndarray | None:
    """Which keys each query may see, broadcastable to (B, NH, Tq, Tk); None = all."""
    visible = None
    if causal:
        # bottom-right alignment: query i sits at absolute position (Tk - Tq) + i
        i = np.arange(tq)[:, None]
        j = np.arange(tk)[None, :]
        visible = (j <= i + (tk - tq))[None, None]  # (1, 1, Tq, Tk)
    if key_padding_mask is not None:
        keys = key_padding_mask[:, None, None, :]  # (B, 1, 1, Tk)
        visible = keys if visible is None else visible & keys
    return visible


def _masked_softmax(s: np.ndarray, visible: np.ndarray | None) -> np.ndarray:
    """Softmax over the last axis restricted to visible keys; empty rows give 0."""
    if visible is not None:
        s = np.where(visible, s, -np.inf)
    m = s.max(axis=-1, keepdims=True)  # (B, NH, Tq, 1)
    # a row with no visible key has m = -inf; shifting it by 0 keeps exp(-inf) = 0
    # instead of the NaN of -inf - (-inf)
    m = np.where(np.isfinite(m), m, 0)
    e = np.exp(s - m)  # every exponent <= 0: no overflow
    total = e.sum(axis=-1, keepdims=True)  # (B, NH, Tq, 1)
    return np.divide(e, total, out=np.zeros_like(e), where=total > 0)


def _attend(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, visible: np.ndarray | None
) -> tuple[np.ndarray, AttentionCache]:
    scale = attention_scale(q.shape[-1])
    s = (q @ k.swapaxes(-1, -2)) * scale  # (B, NH, Tq, Tk)
    att = _masked_softmax(s, visible)  # (B, NH, Tq, Tk)
    out = att @ v  # (B, NH, Tq, HS)
    return out, AttentionCache(q, k, v, att, scale)


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
    visible = _visible(q.shape[2], k.shape[2], bool(causal), key_padding_mask)
    return _attend(q, k, v, visible)


def _attend_backward(
    dout: np.ndarray, cache: AttentionCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    q, k, v, att, _ = cache
    # a Python float keeps float32 arrays float32 (a NumPy float64 scalar would not)
    scale = float(cache.scale)
    dv = att.swapaxes(-1, -2) @ dout  # (B, NH, Tk, HS)
    da = dout @ v.swapaxes(-1, -2)  # (B, NH, Tq, Tk)
    ds = att * (da - np.sum(att * da, axis=-1, keepdims=True))  # (B, NH, Tq, Tk)
    dq = (ds @ k) * scale  # (B, NH, Tq, HS)
    dk = (ds.swapaxes(-1, -2) @ q) * scale  # (B, NH, Tk, HS)
    return dq, dk, dv


def attention_backward(
    dout: np.ndarray, cache: AttentionCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dq, dk, dv) from dout; the derivation is in ``cllm_spec.attention``."""
    validate_attention_backward(dout, cache)
    return _attend_backward(dout, cache)


# ----------------------------------------------------------- KV cache ------
kv_cache_new = new_kv_cache


def _append(cache: KVCache, k: np.ndarray, v: np.ndarray) -> KVCache:
    start = int(cache.length)
    end = start + k.shape[2]
    # the one in-place write of the spec: the buffers are preallocated for it
    cache.k[:, :, start:end] = k
    cache.v[:, :, start:end] = v
    return KVCache(cache.k, cache.v, end)


def kv_cache_append(cache: KVCache, k: np.ndarray, v: np.ndarray) -> KVCache:
    """Write k, v at [length, length + Tn) and return the longer cache."""
    validate_kv_cache_append(cache, k, v)
    return _append(cache, k, v)


kv_cache_reset = reset_kv_cache


# ------------------------------------------------ multi-head attention -----
def _linear(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None
) -> tuple[np.ndarray, LinearCache]:
    y = x @ w.T  # (..., OUT)
    if b is not None:
        y = y + b
    return y, LinearCache(x, w, b is not None)


def _linear_backward(
    dy: np.ndarray, cache: LinearCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    x, w, has_bias = cache
    dy2 = dy.reshape(-1, w.shape[0])  # (N, OUT)
    dx = dy @ w  # (..., IN)
    dw = dy2.T @ x.reshape(-1, w.shape[1])  # (OUT, IN)
    db = dy2.sum(axis=0) if has_bias else None  # (OUT,)
    return dx, dw, db


def _split_heads(x: np.ndarray, n_head: int) -> np.ndarray:
    b, t, c = x.shape
    return x.reshape(b, t, n_head, c // n_head).transpose(0, 2, 1, 3)  # (B, NH, T, HS)


def _merge_heads(x: np.ndarray) -> np.ndarray:
    b, nh, t, hs = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, t, nh * hs)  # (B, T, C)


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
    n_head = int(n_head)
    qkv, qkv_cache = _linear(x, w_qkv, b_qkv)  # (B, T, 3C)
    q, k, v = (_split_heads(p, n_head) for p in np.split(qkv, 3, axis=-1))
    new_cache = None
    if kv_cache is not None:
        new_cache = _append(kv_cache, k, v)
        if kv_cache.length > 0:
            # views of the prefix: later appends never write below new_cache.length
            k = new_cache.k[:, :, : new_cache.length]  # (B, NH, Tk, HS)
            v = new_cache.v[:, :, : new_cache.length]  # (B, NH, Tk, HS)
    visible = _visible(q.shape[2], k.shape[2], True, None)
    a, attn_cache = _attend(q, k, v, visible)  # (B, NH, T, HS)
    y, proj_cache = _linear(_merge_heads(a), w_proj, b_proj)  # (B, T, C)
    return y, MHACache(qkv_cache, attn_cache, proj_cache, n_head), new_cache


def mha_backward(
    dy: np.ndarray, cache: MHACache
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
    """(dx, dw_qkv, db_qkv, dw_proj, db_proj); bias grads are None without a bias."""
    validate_mha_backward(dy, cache)
    da, dw_proj, db_proj = _linear_backward(dy, cache.proj)  # (B, T, C)
    grads = _attend_backward(_split_heads(da, cache.n_head), cache.attn)
    dqkv = np.concatenate([_merge_heads(g) for g in grads], axis=-1)  # (B, T, 3C)
    dx, dw_qkv, db_qkv = _linear_backward(dqkv, cache.qkv)
    return dx, dw_qkv, db_qkv, dw_proj, db_proj
