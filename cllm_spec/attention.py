"""Attention: scaled dot-product attention, multi-head self-attention, the KV cache.

Shape letters: B batch, NH heads, Tq queries, Tk keys, HS head size, C = NH * HS,
T_max the capacity of a KV cache.

Scaled dot-product attention
============================

``attention_forward(q, k, v, *, causal=True, key_padding_mask=None)``::

    q: (B, NH, Tq, HS) float32 | float64
    k: (B, NH, Tk, HS) same dtype
    v: (B, NH, Tk, HS) same dtype
    key_padding_mask: (B, Tk) bool or None    True = the key takes part
    out: (B, NH, Tq, HS) same dtype; cache: AttentionCache(q, k, v, att, scale)

with ``scale = 1 / sqrt(HS)``::

    s[b,h,i,j]   = scale * sum_d q[b,h,i,d] k[b,h,j,d]
    vis[b,i,j]   = (not causal or j <= i + (Tk - Tq)) and key_padding_mask[b, j]
    att[b,h,i,j] = exp(s[i,j] - m_i) / sum_{j' vis} exp(s[i,j'] - m_i)  if vis[b,i,j]
                 = 0                                                    otherwise
    out[b,h,i,:] = sum_j att[b,h,i,j] v[b,h,j,:]

``m_i = max_{j vis} s[i,j]`` does not change the value; it keeps every exponent
<= 0, so the softmax cannot overflow however large the scores are.

This is ``torch.nn.functional.scaled_dot_product_attention`` (dropout 0, default
scale) with the boolean ``attn_mask`` convention (True = take part) for
``key_padding_mask``. Note that ``nn.MultiheadAttention``'s own
``key_padding_mask`` means the opposite (True = ignore); ours does not.

Causal alignment: the causal rule is *bottom-right* aligned. Query ``i`` sits at
absolute position ``Tk - Tq + i`` and sees the keys ``j <= Tk - Tq + i``: the
last ``Tq`` positions of a sequence of ``Tk`` attend over the whole prefix, which
is what incremental decoding needs. For ``Tq == Tk`` this is PyTorch's
``is_causal=True``. For ``Tq != Tk`` PyTorch's ``is_causal`` is *top-left*
aligned (query i sees keys j <= i); we follow
``torch.nn.attention.bias.causal_lower_right`` instead. ``causal`` with
``Tq > Tk`` would leave the first ``Tq - Tk`` queries without a key by
construction; ``causal_lower_right`` accepts it, we raise ``ShapeError``
because no caller of a causal model has a reason to ask for it.

Rows with no visible key: a query row that sees no key (every key padded, or
its causal window holds only padded keys) outputs zeros, has ``att`` = 0 and
receives zero gradients. This is what ``scaled_dot_product_attention`` does
since PyTorch 2.5, whose math path uses a "safe softmax" that zeroes fully
masked rows (pytorch/pytorch#133882); earlier versions, and a plain softmax over
all -inf scores, give NaN. We require the zeros: a fully padded row is
legitimate in a batch, and NaN would poison the loss and every gradient of it.

Backward, ``attention_backward(dout, cache) -> (dq, dk, dv)``, with g = dout::

    dv  = att^T g                                  (B, NH, Tk, HS)
    da  = g v^T                                    (B, NH, Tq, Tk)
    ds  = att * (da - sum_j (att * da))            softmax Jacobian, per row
    dq  = scale * ds k                             (B, NH, Tq, HS)
    dk  = scale * ds^T q                           (B, NH, Tk, HS)

Masked entries have att = 0, hence ds = 0: they pass no gradient.

KV cache
========

``KVCache(k, v, length)`` holds preallocated ``k, v: (B, NH, T_max, HS)``; only
positions ``[0, length)`` are meaningful (the rest is unspecified).

- ``kv_cache_new(batch, n_head, t_max, head_size, dtype)``: zero buffers,
  ``length = 0``. Sizes are ints >= 1 whose buffers take at most
  ``MAX_KV_CACHE_BYTES`` (4 GiB) together (``ConfigError``); ``dtype`` is
  float32 or float64 (``DTypeError``).
- ``kv_cache_append(cache, k, v)`` with ``k, v: (B, NH, Tn, HS)``, Tn >= 1:
  writes them into the buffers at ``[length, length + Tn)`` and returns
  ``KVCache(cache.k, cache.v, length + Tn)``. This is the one documented in-place
  write of the spec; the old tuple still describes a valid prefix. If
  ``length + Tn > T_max`` it raises ``CacheFullError`` and writes nothing.
  B, NH, HS must match the buffers (``ShapeError``), dtypes too (``DTypeError``).
  Buffers that are read-only (``flags.writeable`` false: a view of ``bytes``, a
  read-only memory map) raise ``ReadOnlyError``, a ``ValueError`` like NumPy's
  own refusal, on every backend and before anything is written; so does
  ``mha_forward`` with such a ``kv_cache``.
- ``kv_cache_reset(cache)``: ``KVCache(cache.k, cache.v, 0)``, the same buffers.

Multi-head self-attention
=========================

``mha_forward(x, w_qkv, b_qkv, w_proj, b_proj, *, n_head, kv_cache=None)``::

    x: (B, T, C); w_qkv: (3C, C); b_qkv: (3C,) | None; w_proj: (C, C);
    b_proj: (C,) | None; n_head = NH with C % NH == 0, HS = C / NH
    qkv = x w_qkv^T + b_qkv                          (B, T, 3C)
    q, k, v = qkv[..., :C], qkv[..., C:2C], qkv[..., 2C:]
    head h of q is q[..., h*HS:(h+1)*HS], moved to   (B, NH, T, HS)
    a = attention(q, k, v, causal=True)              (B, NH, T, HS)
    a merged back (head h -> channels h*HS..)        (B, T, C)
    y = a w_proj^T + b_proj                          (B, T, C)

This is nanoGPT's ``CausalSelfAttention`` without dropout, and
``nn.MultiheadAttention(C, NH, batch_first=True)`` with ``in_proj_weight =
w_qkv``, ``out_proj.weight = w_proj`` and a causal mask. It returns ``(y,
MHACache, kv)``. With ``kv_cache``, the new k, v are appended first and the T new
queries attend over all ``length + T`` cached positions (causal, bottom-right),
so decoding token by token or in chunks equals the full causal forward; ``kv``
is the appended cache (``None`` without one). The cache must be (B, NH, T_max,
HS) in x's dtype; if ``length + T > T_max`` the call raises ``CacheFullError``
before it writes anything.

``mha_backward(dy, cache) -> (dx, dw_qkv, db_qkv, dw_proj, db_proj)``, with the
bias gradients ``None`` where the forward had no bias: the linear backward
(``dx = dy w``, ``dw = dy^T x`` summed over B and T, ``db = sum dy``) around the
attention backward, heads split and merged as in the forward. Training never
uses the KV cache: a cache from a forward whose queries attended to positions
cached by earlier calls (Tk > Tq) raises ``Unsupported``. A forward through an
empty cache computes exactly the training forward, so its backward is allowed.

Errors
======

Arguments that are not float32/float64 ndarrays, or float arguments of mixed
dtypes, or a mask that is not bool: ``DTypeError``. Wrong rank, shapes that
disagree, ``C % NH != 0``, ``causal`` with Tq > Tk: ``ShapeError``. A zero-size
dimension: ``EmptyInputError``. NaN or inf in q, k, v, x, the weights, dout,
dy, or the k, v given to ``kv_cache_append``: ``NonFiniteError`` (PyTorch
propagates NaN; softmax turns one non-finite score into a NaN row far from its
cause). ``n_head`` not an int >= 1, ``causal`` not a bool: ``ConfigError``.
Everything is checked before anything is computed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cllm_spec import checks
from cllm_spec.errors import (
    CacheFullError,
    ConfigError,
    DTypeError,
    ShapeError,
    Unsupported,
)
from cllm_spec.protocols import AttentionCache, KVCache, MHACache

#: The most memory one KV cache (keys and values) may take.
MAX_KV_CACHE_BYTES = 2**32


def _expect_float_tensor(name: str, x: object, rank: int) -> np.ndarray:
    arr = checks.expect_float(name, x)
    checks.expect_rank(name, arr, rank)
    checks.expect_nonempty(name, arr)
    return arr


def validate_attention(
    q: Any, k: Any, v: Any, causal: Any, key_padding_mask: Any
) -> None:
    """The checks of ``attention_forward`` (see the module docstring)."""
    checks.expect_flag("causal", causal)
    for name, arr in (("q", q), ("k", k), ("v", v)):
        _expect_float_tensor(name, arr, 4)
    checks.expect_same_dtype(("q", "k", "v"), (q, k, v))
    b, nh, tq, hs = q.shape
    tk = k.shape[2]
    checks.expect_shape("k", k, (b, nh, None, hs))
    checks.expect_shape("v", v, (b, nh, tk, hs))
    if causal and tq > tk:
        raise ShapeError(
            f"causal attention needs Tq <= Tk (bottom-right alignment), "
            f"got Tq={tq} > Tk={tk}"
        )
    if key_padding_mask is not None:
        checks.expect_bool("key_padding_mask", key_padding_mask)
        checks.expect_shape("key_padding_mask", key_padding_mask, (b, tk))
    for name, arr in (("q", q), ("k", k), ("v", v)):
        checks.expect_finite(name, arr)


def attention_scale(head_size: int) -> float:
    """The softmax temperature 1/sqrt(HS), as a Python float."""
    return 1.0 / math.sqrt(head_size)


def _expect_attention_cache(cache: Any, name: str) -> AttentionCache:
    """q (B, NH, Tq, HS), k and v (B, NH, Tk, HS), att (B, NH, Tq, Tk), one dtype."""
    checked = checks.expect_cache(cache, AttentionCache, name)
    q, k, v, att, _ = checked
    for field, arr in (("q", q), ("k", k), ("v", v), ("att", att)):
        _expect_float_tensor(f"{name}.{field}", arr, 4)
    checks.expect_same_dtype(
        [f"{name}.{f}" for f in ("q", "k", "v", "att")], (q, k, v, att)
    )
    b, nh, tq, hs = q.shape
    checks.expect_shape(f"{name}.k", k, (b, nh, None, hs))
    checks.expect_shape(f"{name}.v", v, k.shape)
    checks.expect_shape(f"{name}.att", att, (b, nh, tq, k.shape[2]))
    return checked


def validate_attention_backward(dout: Any, cache: Any) -> None:
    """The checks of ``attention_backward``: ``dout`` matches the forward output."""
    _expect_attention_cache(cache, "cache")
    _expect_float_tensor("dout", dout, 4)
    checks.expect_same_dtype(("dout", "cache.q"), (dout, cache.q))
    checks.expect_shape("dout", dout, cache.q.shape[:3] + cache.v.shape[3:])
    checks.expect_finite("dout", dout)


def _validate_kv_buffers(cache: Any) -> None:
    checks.expect_cache(cache, KVCache)
    _expect_float_tensor("cache.k", cache.k, 4)
    checks.expect_same_dtype(("cache.k", "cache.v"), (cache.k, cache.v))
    checks.expect_shape("cache.v", cache.v, cache.k.shape)
    length = cache.length
    t_max = cache.k.shape[2]
    if isinstance(length, bool) or not isinstance(length, int | np.integer):
        raise DTypeError(f"cache.length: expected an int, got {type(length).__name__}")
    if not 0 <= length <= t_max:
        raise ShapeError(f"cache.length: expected 0 <= length <= {t_max}, got {length}")


def validate_kv_cache_new(
    batch: Any, n_head: Any, t_max: Any, head_size: Any, dtype: Any
) -> np.dtype[Any]:
    """The checks of ``kv_cache_new``; returns the buffers' dtype."""
    for name, value in (
        ("batch", batch),
        ("n_head", n_head),
        ("t_max", t_max),
        ("head_size", head_size),
    ):
        checks.expect_positive_int(name, value)
    try:
        dt: np.dtype[Any] = np.dtype(dtype)
    except Exception as exc:  # numpy raises TypeError, ValueError and others
        raise DTypeError(f"dtype: not a dtype: {dtype!r}") from exc
    if dt not in checks.FLOAT_DTYPES:
        raise DTypeError(f"dtype: expected float32 or float64, got {dt}")
    nbytes = 2 * math.prod((batch, n_head, t_max, head_size)) * dt.itemsize
    if nbytes > MAX_KV_CACHE_BYTES:
        raise ConfigError(
            f"a KV cache of {nbytes} bytes exceeds {MAX_KV_CACHE_BYTES}",
            hint="t_max needs to be the model's context length, not more",
        )
    return dt


def _expect_writeable_buffers(cache: KVCache, name: str) -> None:
    checks.expect_writeable(f"{name}.k", cache.k)
    checks.expect_writeable(f"{name}.v", cache.v)


def validate_kv_cache_append(cache: Any, k: Any, v: Any) -> None:
    """The checks of ``kv_cache_append``, including the capacity (CacheFullError)."""
    _validate_kv_buffers(cache)
    _expect_writeable_buffers(cache, "cache")
    for name, arr in (("k", k), ("v", v)):
        _expect_float_tensor(name, arr, 4)
    checks.expect_same_dtype(("cache.k", "k", "v"), (cache.k, k, v))
    b, nh, t_max, hs = cache.k.shape
    checks.expect_shape("k", k, (b, nh, None, hs))
    checks.expect_shape("v", v, k.shape)
    checks.expect_finite("k", k)
    checks.expect_finite("v", v)
    expect_room(cache, k.shape[2])


def validate_kv_cache_reset(cache: Any) -> None:
    """The checks of ``kv_cache_reset``."""
    _validate_kv_buffers(cache)


# The KV cache's buffers are plain arrays in every backend (a backend's kernels
# read and write them in place), so allocating and resetting one is spec code
# that backends re-export rather than reimplement.
def new_kv_cache(
    batch: int, n_head: int, t_max: int, head_size: int, dtype: Any
) -> KVCache:
    """Zero (B, NH, T_max, HS) key and value buffers with length 0."""
    dt = validate_kv_cache_new(batch, n_head, t_max, head_size, dtype)
    shape = (int(batch), int(n_head), int(t_max), int(head_size))
    return KVCache(np.zeros(shape, dt), np.zeros(shape, dt), 0)


def reset_kv_cache(cache: KVCache) -> KVCache:
    """The same buffers with length 0."""
    validate_kv_cache_reset(cache)
    return KVCache(cache.k, cache.v, 0)


def expect_room(cache: KVCache, t_new: int) -> None:
    """Raise CacheFullError unless ``t_new`` more positions fit in ``cache``."""
    t_max = cache.k.shape[2]
    if cache.length + t_new > t_max:
        raise CacheFullError(
            f"KV cache full: length {cache.length} + {t_new} new > T_max {t_max}"
        )


def validate_kv_cache_for(
    kv_cache: Any, dtype: np.dtype[Any], bnh_hs: tuple[int, int, int], t_new: int
) -> None:
    """``kv_cache`` is a KVCache of writeable (B, NH, T_max, HS) buffers in
    ``dtype``, for ``bnh_hs = (B, NH, HS)``, with room for ``t_new`` more positions."""
    _validate_kv_buffers(kv_cache)
    _expect_writeable_buffers(kv_cache, "kv_cache")
    if kv_cache.k.dtype != dtype:
        raise DTypeError(f"kv_cache.k: expected {dtype}, got {kv_cache.k.dtype}")
    b, nh, hs = bnh_hs
    checks.expect_shape("kv_cache.k", kv_cache.k, (b, nh, None, hs))
    expect_room(kv_cache, t_new)


def validate_mha(
    x: Any,
    w_qkv: Any,
    b_qkv: Any,
    w_proj: Any,
    b_proj: Any,
    n_head: Any,
    kv_cache: Any,
) -> None:
    """The checks of ``mha_forward``, including the KV cache's shape and room."""
    nh = checks.expect_positive_int("n_head", n_head)
    _expect_float_tensor("x", x, 3)
    b, t, c = x.shape
    if c % nh:
        raise ShapeError(f"C={c} is not divisible by n_head={nh}")
    named = [("x", x), ("w_qkv", w_qkv), ("w_proj", w_proj)]
    named += [
        (n, a) for n, a in (("b_qkv", b_qkv), ("b_proj", b_proj)) if a is not None
    ]
    for name, arr in named[1:]:
        checks.expect_float(name, arr)
    checks.expect_same_dtype([n for n, _ in named], [a for _, a in named])
    checks.expect_shape("w_qkv", w_qkv, (3 * c, c))
    checks.expect_shape("w_proj", w_proj, (c, c))
    if b_qkv is not None:
        checks.expect_shape("b_qkv", b_qkv, (3 * c,))
    if b_proj is not None:
        checks.expect_shape("b_proj", b_proj, (c,))
    if kv_cache is not None:
        validate_kv_cache_for(kv_cache, x.dtype, (b, nh, c // nh), t)
    for name, arr in named:
        checks.expect_finite(name, arr)


def validate_mha_backward(dy: Any, cache: Any) -> None:
    """The checks of ``mha_backward``; a decoding cache (Tk > Tq) is Unsupported."""
    checks.expect_cache(cache, MHACache)
    _expect_attention_cache(cache.attn, "cache.attn")
    tq, tk = cache.attn.q.shape[2], cache.attn.k.shape[2]
    if tk != tq:
        raise Unsupported(
            f"mha_backward after a KV-cache forward that attended to {tk - tq} "
            "earlier cached positions: training never uses the KV cache",
            hint="run the training forward without kv_cache",
        )
    _expect_float_tensor("dy", dy, 3)
    checks.expect_same_dtype(("dy", "cache.proj.x"), (dy, cache.proj.x))
    checks.expect_shape("dy", dy, cache.proj.x.shape)
    _expect_mha_cache_shapes(cache, dy.shape)
    checks.expect_finite("dy", dy)


def _expect_mha_cache_shapes(cache: MHACache, shape: tuple[int, ...]) -> None:
    """The parts of an MHACache agree with each other and with dy: (B, T, C)."""
    b, t, c = shape
    nh = checks.expect_positive_int("cache.n_head", cache.n_head)
    if c % nh:
        raise ShapeError(f"cache: C={c} is not divisible by n_head={nh}")
    qkv, attn, proj = cache.qkv, cache.attn, cache.proj
    names = ("dy", "cache.qkv.x", "cache.qkv.w", "cache.proj.w", "cache.attn.q")
    checks.expect_same_dtype(names, (cache.proj.x, qkv.x, qkv.w, proj.w, attn.q))
    checks.expect_shape("cache.qkv.x", qkv.x, (b, t, c))
    checks.expect_shape("cache.qkv.w", qkv.w, (3 * c, c))
    checks.expect_shape("cache.proj.w", proj.w, (c, c))
    checks.expect_shape("cache.attn.q", attn.q, (b, nh, t, c // nh))
