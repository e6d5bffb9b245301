"""Conformance of attention on bad inputs: each is refused with a typed error.

Spec: ``cllm_spec.attention``. Dtypes, ranks, shapes, masks, empty and
non-finite inputs, head counts and parameter shapes, bad KV cache arguments and
read-only cache buffers; a refused call leaves the cache unchanged.
``test_seed14_*`` is the equivalent of test 14 (null handling) of the original
``tests/unit/test_attention.c``.
"""

from __future__ import annotations

import numpy as np
import pytest

from cllm_spec.errors import (
    ConfigError,
    DTypeError,
    EmptyInputError,
    NonFiniteError,
    ReadOnlyError,
    ShapeError,
)
from cllm_spec.protocols import KVCache
from conformance.attention_helpers import good_mha, qkv_inputs
from conformance.strategies import normal


def good_qkv(dtype=np.float32):
    rng = np.random.default_rng(0)
    return qkv_inputs(rng, (2, 2, 3, 4), 3, dtype)


@pytest.mark.parametrize(
    "make",
    [
        lambda q, k, v: (q.astype(np.int32), k, v),
        lambda q, k, v: (q, k.astype(np.float16), v),
        lambda q, k, v: (q, k, v.astype(np.float64)),
        lambda q, k, v: (q.tolist(), k, v),
        lambda q, k, v: (None, k, v),
    ],
    ids=["int_q", "float16_k", "mixed_v", "list_q", "none_q"],
)
def test_attention_rejects_bad_dtypes(backend, make):
    with pytest.raises(DTypeError):
        backend.attention_forward(*make(*good_qkv()))


@pytest.mark.parametrize(
    "make",
    [
        lambda q, k, v: (q[0], k, v),
        lambda q, k, v: (q, k[None], v),
        lambda q, k, v: (q, k, v[..., 0]),
    ],
    ids=["q_rank3", "k_rank5", "v_rank3"],
)
def test_attention_rejects_bad_ranks(backend, make):
    with pytest.raises(ShapeError):
        backend.attention_forward(*make(*good_qkv()))


@pytest.mark.parametrize(
    "make",
    [
        lambda q, k, v: (q, k[:1], v),  # B
        lambda q, k, v: (q, k[:, :1], v),  # NH
        lambda q, k, v: (q, k[..., :3], v),  # HS of k
        lambda q, k, v: (q, k, v[:, :, :2]),  # Tk of v
        lambda q, k, v: (q, k, v[..., :3]),  # HS of v
    ],
    ids=["batch", "heads", "k_head_size", "v_length", "v_head_size"],
)
def test_attention_rejects_shape_mismatches(backend, make):
    with pytest.raises(ShapeError):
        backend.attention_forward(*make(*good_qkv()), causal=False)


def test_causal_attention_with_more_queries_than_keys_is_a_shape_error(backend, rng):
    q, k, v = qkv_inputs(rng, (1, 1, 4, 2), 3, np.float32)
    with pytest.raises(ShapeError):
        backend.attention_forward(q, k, v, causal=True)
    out, _ = backend.attention_forward(q, k, v, causal=False)  # fine without causal
    assert out.shape == q.shape


@pytest.mark.parametrize(
    ("mask", "error"),
    [
        (np.ones((2, 3), np.int32), DTypeError),
        (np.ones((2, 3), np.float32), DTypeError),
        (np.ones((2, 4), bool), ShapeError),
        (np.ones((1, 3), bool), ShapeError),
        (np.ones((2, 1, 3), bool), ShapeError),
    ],
    ids=["int", "float", "long", "short_batch", "rank3"],
)
def test_attention_rejects_bad_masks(backend, mask, error):
    with pytest.raises(error):
        backend.attention_forward(*good_qkv(), key_padding_mask=mask)


@pytest.mark.parametrize("axis", [0, 1, 2, 3])
def test_attention_rejects_empty_inputs(backend, axis):
    q, k, v = good_qkv()
    empty = [slice(None)] * 4
    empty[axis] = slice(0, 0)
    q, k, v = (a[tuple(empty)] for a in (q, k, v))
    with pytest.raises(EmptyInputError):
        backend.attention_forward(q, k, v)


@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_attention_rejects_non_finite_inputs(backend, which, bad):
    args = list(good_qkv())
    args[which] = args[which].copy()
    args[which][1, 0, 2, 1] = bad
    with pytest.raises(NonFiniteError):
        backend.attention_forward(*args)


@pytest.mark.parametrize("causal", [1, 0, "yes", None])
def test_attention_rejects_a_non_bool_causal_flag(backend, causal):
    with pytest.raises(ConfigError):
        backend.attention_forward(*good_qkv(), causal=causal)


def test_attention_backward_rejects_bad_dout(backend, rng):
    q, k, v = good_qkv()
    out, cache = backend.attention_forward(q, k, v)
    with pytest.raises(ShapeError):
        backend.attention_backward(out[:, :, :2], cache)
    with pytest.raises(DTypeError):
        backend.attention_backward(out.astype(np.float64), cache)
    bad = out.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(NonFiniteError):
        backend.attention_backward(bad, cache)
    with pytest.raises(DTypeError):
        backend.attention_backward(out, tuple(cache)[:4])


@pytest.mark.parametrize("n_head", [4, 5, 12])
def test_mha_rejects_channels_not_divisible_by_heads(backend, n_head):
    with pytest.raises(ShapeError):
        backend.mha_forward(*good_mha(), n_head=n_head)


@pytest.mark.parametrize("n_head", [0, -2, 2.0, True, None])
def test_mha_rejects_bad_head_counts(backend, n_head):
    with pytest.raises(ConfigError):
        backend.mha_forward(*good_mha(), n_head=n_head)


@pytest.mark.parametrize(
    ("index", "shape"),
    [(1, (6, 18)), (1, (18, 5)), (2, (12,)), (3, (6, 5)), (4, (5,)), (4, (1, 6))],
    ids=["w_qkv_transposed", "w_qkv_narrow", "b_qkv", "w_proj", "b_proj", "b_proj2d"],
)
def test_mha_rejects_bad_parameter_shapes(backend, index, shape):
    args = good_mha()
    args[index] = np.zeros(shape, np.float32)
    with pytest.raises(ShapeError):
        backend.mha_forward(*args, n_head=2)


@pytest.mark.parametrize("index", [0, 1, 2, 3, 4])
def test_mha_rejects_mixed_dtypes(backend, index):
    args = good_mha()
    args[index] = args[index].astype(np.float64)
    with pytest.raises(DTypeError):
        backend.mha_forward(*args, n_head=2)


def test_mha_rejects_bad_x(backend):
    x, *params = good_mha()
    with pytest.raises(DTypeError):
        backend.mha_forward(x.astype(np.int64), *params, n_head=2)
    with pytest.raises(ShapeError):
        backend.mha_forward(x[0], *params, n_head=2)
    with pytest.raises(EmptyInputError):
        backend.mha_forward(x[:, :0], *params, n_head=2)


@pytest.mark.parametrize("index", [0, 1, 2, 3, 4])
def test_mha_rejects_non_finite_inputs(backend, index):
    args = good_mha()
    args[index] = args[index].copy()
    args[index].reshape(-1)[3] = np.nan
    with pytest.raises(NonFiniteError):
        backend.mha_forward(*args, n_head=2)


def test_mha_backward_rejects_bad_dy(backend):
    y, cache, _ = backend.mha_forward(*good_mha(), n_head=2)
    with pytest.raises(ShapeError):
        backend.mha_backward(y[:, :2], cache)
    with pytest.raises(DTypeError):
        backend.mha_backward(y.astype(np.float64), cache)
    with pytest.raises(DTypeError):
        backend.mha_backward(y, cache.attn)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((0, 2, 4, 3, np.float32), ConfigError),
        ((1, -1, 4, 3, np.float32), ConfigError),
        ((1, 2, 2.5, 3, np.float32), ConfigError),
        ((1, 2, 4, True, np.float32), ConfigError),
        ((1, 2, 4, 3, np.int32), DTypeError),
        ((1, 2, 4, 3, np.float16), DTypeError),
        ((1, 2, 4, 3, "not a dtype"), DTypeError),
    ],
    ids=["batch0", "heads_neg", "tmax_float", "hs_bool", "int", "half", "garbage"],
)
def test_kv_cache_new_rejects_bad_arguments(backend, args, error):
    with pytest.raises(error):
        backend.kv_cache_new(*args)


@pytest.mark.parametrize(
    ("shape", "key_dtype", "error"),
    [
        ((1, 2, 1, 3), np.float64, DTypeError),
        ((2, 2, 1, 3), np.float32, ShapeError),
        ((1, 1, 1, 3), np.float32, ShapeError),
        ((1, 2, 1, 2), np.float32, ShapeError),
        ((2, 1, 3), np.float32, ShapeError),
        ((1, 2, 0, 3), np.float32, EmptyInputError),
    ],
    ids=["dtype", "batch", "heads", "head_size", "rank", "empty"],
)
def test_kv_cache_append_rejects_bad_keys(backend, shape, key_dtype, error):
    cache = backend.kv_cache_new(1, 2, 4, 3, np.float32)
    k = np.zeros(shape, key_dtype)
    with pytest.raises(error):
        backend.kv_cache_append(cache, k, k.copy())
    assert cache.length == 0


def read_only_buffers(kind: str, shape, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Two read-only (B, NH, T_max, HS) buffers of the kind named."""
    if kind == "bytes":  # the memory of an immutable bytes object
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return tuple(np.frombuffer(bytes(n), dtype).reshape(shape) for _ in range(2))
    k, v = np.zeros(shape, dtype), np.zeros(shape, dtype)
    if kind == "flag":
        k.flags.writeable = v.flags.writeable = False
    elif kind == "one":  # only v is read-only
        v.flags.writeable = False
    elif kind == "view":  # a read-only view of a writeable array
        k, v = np.lib.stride_tricks.as_strided(k, writeable=False), v[...]
        v.flags.writeable = False
    return k, v


READ_ONLY = ["bytes", "flag", "one", "view"]


@pytest.mark.parametrize("kind", READ_ONLY)
def test_kv_cache_append_refuses_read_only_buffers(backend, dtype, rng, kind):
    k_buf, v_buf = read_only_buffers(kind, (1, 2, 4, 3), dtype)
    before = k_buf.copy(), v_buf.copy()
    k = normal(rng, (1, 2, 2, 3), dtype)
    with pytest.raises(ReadOnlyError, match="read-only"):
        backend.kv_cache_append(KVCache(k_buf, v_buf, 0), k, k.copy())
    assert np.array_equal(k_buf, before[0]) and np.array_equal(v_buf, before[1])


@pytest.mark.parametrize("kind", READ_ONLY)
def test_mha_refuses_a_read_only_kv_cache(backend, dtype, kind):
    k_buf, v_buf = read_only_buffers(kind, (2, 2, 4, 3), dtype)
    before = k_buf.copy(), v_buf.copy()
    args = good_mha(dtype)
    with pytest.raises(ReadOnlyError, match="read-only"):
        backend.mha_forward(*args, n_head=2, kv_cache=KVCache(k_buf, v_buf, 1))
    assert np.array_equal(k_buf, before[0]) and np.array_equal(v_buf, before[1])


def test_kv_cache_reset_of_read_only_buffers_is_fine(backend, dtype):
    # reset writes nothing, so read-only buffers are no reason to refuse it
    k_buf, v_buf = read_only_buffers("bytes", (1, 2, 4, 3), dtype)
    assert backend.kv_cache_reset(KVCache(k_buf, v_buf, 2)).length == 0


def test_kv_cache_functions_reject_things_that_are_not_caches(backend):
    k = np.zeros((1, 2, 1, 3), np.float32)
    with pytest.raises(DTypeError):
        backend.kv_cache_append((k, k, 0), k, k)
    with pytest.raises(DTypeError):
        backend.kv_cache_reset(None)
    with pytest.raises(ShapeError):
        backend.kv_cache_append(
            KVCache(
                np.zeros((1, 2, 4, 3), np.float32),
                np.zeros((1, 2, 4, 3), np.float32),
                5,
            ),
            k,
            k,
        )


@pytest.mark.parametrize(
    ("cache_args", "error"),
    [
        ((2, 3, 4, 2, np.float32), ShapeError),  # NH 3 vs n_head 2
        ((2, 2, 4, 2, np.float32), ShapeError),  # HS 2 vs C / NH = 3
        ((1, 2, 4, 3, np.float32), ShapeError),  # B
        ((2, 2, 4, 3, np.float64), DTypeError),
    ],
    ids=["heads", "head_size", "batch", "dtype"],
)
def test_mha_rejects_a_mismatched_kv_cache(backend, cache_args, error):
    cache = backend.kv_cache_new(*cache_args)
    with pytest.raises(error):
        backend.mha_forward(*good_mha(), n_head=2, kv_cache=cache)
    assert cache.length == 0


def test_seed14_none_arguments_raise_typed_errors(backend):
    # original null_handling: NULL arguments must not crash; here they are typed errors
    x, w_qkv, b_qkv, w_proj, b_proj = good_mha()
    with pytest.raises(DTypeError):
        backend.mha_forward(None, w_qkv, b_qkv, w_proj, b_proj, n_head=2)
    with pytest.raises(DTypeError):
        backend.mha_forward(x, None, b_qkv, w_proj, b_proj, n_head=2)
    with pytest.raises(DTypeError):
        backend.mha_backward(x, None)
    with pytest.raises(DTypeError):
        backend.attention_backward(x, None)
