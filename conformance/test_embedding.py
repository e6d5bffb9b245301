"""Conformance of the token + position embedding (spec: ``cllm_spec.embedding``).

Evidence: the float64 reference (``oracle``), explicit loops written below
(``slow_embedding``, ``slow_embedding_backward``) that check the reference
itself, hand-derived goldens with small integers (exact in both float dtypes),
and finite differences for the backward.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cllm_spec.errors import (
    ConfigError,
    DTypeError,
    EmptyInputError,
    IdRangeError,
    ShapeError,
)
from cllm_spec.protocols import EmbeddingCache
from conformance.gradcheck import needs_float64
from conformance.strategies import EDGE_SIZES, FIXTURE_OK, as_oracle, normal

F64 = np.dtype(np.float64)


# ------------------------------------------------------------ helpers ------
def slow_embedding(ids, wte, wpe, pos_offset):
    """x[b, t] = wte[ids[b, t]] + wpe[pos_offset + t], one element at a time."""
    n_b, n_t = ids.shape
    c = wte.shape[1]
    x = np.zeros((n_b, n_t, c))
    for b in range(n_b):
        for t in range(n_t):
            for ch in range(c):
                x[b, t, ch] = float(wte[ids[b, t], ch]) + float(wpe[pos_offset + t, ch])
    return x


def slow_embedding_backward(dx, ids, vocab_size, n_positions, pos_offset):
    """Scatter-add, one (b, t) row at a time."""
    c = dx.shape[-1]
    dwte = np.zeros((vocab_size, c))
    dwpe = np.zeros((n_positions, c))
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            dwte[ids[b, t]] += dx[b, t]
            dwpe[pos_offset + t] += dx[b, t]
    return dwte, dwpe


def tables(rng, v, c, t_max, dtype):
    return normal(rng, (v, c), dtype), normal(rng, (t_max, c), dtype)


def golden_tables(dtype):
    # wte[v] = [10 v, 10 v + 1], wpe[p] = [p, -p]: every sum is an exact small integer
    wte = np.array([[10.0 * v, 10.0 * v + 1.0] for v in range(5)], dtype)
    wpe = np.array([[float(p), -float(p)] for p in range(6)], dtype)
    return wte, wpe


# -------------------------------------------------- vs the reference -------
@pytest.mark.parametrize("t", EDGE_SIZES)
def test_forward_matches_oracle_over_T(backend, dtype, oracle, rng, check, t):
    wte, wpe = tables(rng, 11, 5, t + 4, dtype)
    ids = rng.integers(0, 11, (2, t))
    x, _ = backend.embedding_forward(ids, wte, wpe, 3)
    ref, _ = oracle.embedding_forward(ids, *as_oracle(wte, wpe), 3)
    check.close(x, ref, output="embedding_forward", dtype=dtype)


@pytest.mark.parametrize("c", EDGE_SIZES)
def test_forward_matches_oracle_over_C(backend, dtype, oracle, rng, check, c):
    wte, wpe = tables(rng, 7, c, 8, dtype)
    ids = rng.integers(0, 7, (3, 5), dtype=np.int32)
    x, _ = backend.embedding_forward(ids, wte, wpe)
    ref, _ = oracle.embedding_forward(ids, *as_oracle(wte, wpe))
    check.close(x, ref, output="embedding_forward", dtype=dtype)


@pytest.mark.parametrize("t", EDGE_SIZES)
def test_backward_matches_oracle_over_T(backend, dtype, oracle, rng, check, t):
    # V = 5 < B*T for most T, so ids repeat and the scatter-add really accumulates
    wte, wpe = tables(rng, 5, 4, t + 2, dtype)
    ids = rng.integers(0, 5, (2, t))
    dx = normal(rng, (2, t, 4), dtype)
    _, cache = backend.embedding_forward(ids, wte, wpe, 2)
    dwte, dwpe = backend.embedding_backward(dx, cache)
    _, ref_cache = oracle.embedding_forward(ids, *as_oracle(wte, wpe), 2)
    ref_dwte, ref_dwpe = oracle.embedding_backward(as_oracle(dx)[0], ref_cache)
    check.close(dwte, ref_dwte, output="embedding_backward.dwte", dtype=dtype)
    check.close(dwpe, ref_dwpe, output="embedding_backward.dwpe", dtype=dtype)


@pytest.mark.parametrize("c", EDGE_SIZES)
def test_backward_matches_oracle_over_C(backend, dtype, oracle, rng, check, c):
    wte, wpe = tables(rng, 3, c, 4, dtype)
    ids = rng.integers(0, 3, (4, 4))
    dx = normal(rng, (4, 4, c), dtype)
    _, cache = backend.embedding_forward(ids, wte, wpe)
    got = backend.embedding_backward(dx, cache)
    _, ref_cache = oracle.embedding_forward(ids, *as_oracle(wte, wpe))
    refs = oracle.embedding_backward(as_oracle(dx)[0], ref_cache)
    for name, g, r in zip(("dwte", "dwpe"), got, refs, strict=True):
        check.close(g, r, output=f"embedding_backward.{name}", dtype=dtype)


# ------------------------------------------------ independent loops --------
@st.composite
def embedding_case(draw):
    b, t = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    v, c = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    pos_offset = draw(st.integers(0, 3))
    extra = draw(st.integers(0, 2))
    seed = draw(st.integers(0, 2**32 - 1))
    return b, t, v, c, pos_offset, pos_offset + t + extra, seed


@FIXTURE_OK
@given(case=embedding_case())
def test_reference_matches_slow_loops(oracle, check, case):
    b, t, v, c, pos_offset, t_max, seed = case
    rng = np.random.default_rng(seed)
    wte, wpe = tables(rng, v, c, t_max, np.float64)
    ids = rng.integers(0, v, (b, t))
    dx = normal(rng, (b, t, c), np.float64)
    x, cache = oracle.embedding_forward(ids, wte, wpe, pos_offset)
    check.close(x, slow_embedding(ids, wte, wpe, pos_offset), output="slow_oracle")
    dwte, dwpe = oracle.embedding_backward(dx, cache)
    want = slow_embedding_backward(dx, ids, v, t_max, pos_offset)
    check.close(dwte, want[0], output="slow_oracle")
    check.close(dwpe, want[1], output="slow_oracle")


@FIXTURE_OK
@given(case=embedding_case())
def test_backend_matches_slow_loops(backend, dtype, check, case):
    b, t, v, c, pos_offset, t_max, seed = case
    rng = np.random.default_rng(seed)
    wte, wpe = tables(rng, v, c, t_max, dtype)
    ids = rng.integers(0, v, (b, t)).astype(np.int32)
    dx = normal(rng, (b, t, c), dtype)
    x, cache = backend.embedding_forward(ids, wte, wpe, pos_offset)
    want = slow_embedding(ids, *as_oracle(wte, wpe), pos_offset)
    check.close(x, want, output="embedding_forward", dtype=dtype)
    dwte, dwpe = backend.embedding_backward(dx, cache)
    want_dwte, want_dwpe = slow_embedding_backward(
        as_oracle(dx)[0], ids, v, t_max, pos_offset
    )
    check.close(dwte, want_dwte, output="embedding_backward.dwte", dtype=dtype)
    check.close(dwpe, want_dwpe, output="embedding_backward.dwpe", dtype=dtype)


# --------------------------------------------------------- goldens ---------
def test_forward_golden(backend, dtype, check):
    # x[b, t] = [10 id + t, 10 id + 1 - t] with wte, wpe from golden_tables
    wte, wpe = golden_tables(dtype)
    ids = np.array([[4, 0, 2], [1, 1, 3]])
    x, _ = backend.embedding_forward(ids, wte, wpe)
    want = np.array(
        [
            [[40, 41], [1, 0], [22, 19]],
            [[10, 11], [11, 10], [32, 29]],
        ],
        dtype,
    )
    check.exact(x, want, output="forward_golden")


def test_forward_pos_offset_golden(backend, dtype, check):
    # pos_offset = 3: rows 3 and 4 of wpe, i.e. [3, -3] and [4, -4]
    wte, wpe = golden_tables(dtype)
    ids = np.array([[2, 2]], dtype=np.int32)
    x, cache = backend.embedding_forward(ids, wte, wpe, 3)
    check.exact(x, np.array([[[23, 18], [24, 17]]], dtype), output="offset_golden")
    assert cache.pos_offset == 3


def test_backward_repeated_ids_accumulate_golden(backend, dtype, check):
    # ids = [[1, 1, 3], [1, 0, 3]], dx[b, t] = [d, 2 d] with d = 1, 2, 4 / 8, 16, 32:
    #   dwte[0] = dx[1,1]                  = [16, 32]
    #   dwte[1] = dx[0,0]+dx[0,1]+dx[1,0]  = [1+2+8, 2+4+16] = [11, 22]
    #   dwte[2] = 0 (unused);  dwte[3] = dx[0,2]+dx[1,2] = [4+32, 8+64] = [36, 72]
    #   dwpe[1 + t] = dx[0,t] + dx[1,t] (pos_offset 1): [9,18], [18,36], [36,72]
    wte, wpe = golden_tables(dtype)
    ids = np.array([[1, 1, 3], [1, 0, 3]])
    d = np.array([[1.0, 2.0, 4.0], [8.0, 16.0, 32.0]])
    dx = np.stack([d, 2 * d], axis=-1).astype(dtype)
    _, cache = backend.embedding_forward(ids, wte, wpe, 1)
    dwte, dwpe = backend.embedding_backward(dx, cache)
    check.exact(
        dwte,
        np.array([[16, 32], [11, 22], [0, 0], [36, 72], [0, 0]], dtype),
        output="dwte_golden",
    )
    want_dwpe = np.array([[0, 0], [9, 18], [18, 36], [36, 72], [0, 0], [0, 0]], dtype)
    check.exact(dwpe, want_dwpe, output="dwpe_golden")


# --------------------------------------------------- math properties -------
def test_backward_of_ones_counts_the_ids(backend, dtype, rng, check):
    # dx = 1 gives dwte[v] = (number of occurrences of v), dwpe[p] = B in the window
    wte, wpe = tables(rng, 9, 3, 12, dtype)
    ids = rng.integers(0, 9, (4, 7))
    _, cache = backend.embedding_forward(ids, wte, wpe, 2)
    dwte, dwpe = backend.embedding_backward(np.ones((4, 7, 3), dtype), cache)
    counts = np.bincount(ids.reshape(-1), minlength=9).astype(dtype)
    check.exact(dwte, np.repeat(counts[:, None], 3, axis=1), output="counts")
    want = np.zeros((12, 3), dtype)
    want[2:9] = 4
    check.exact(dwpe, want, output="batch_counts")


def test_backward_conserves_the_total_gradient(backend, dtype, rng, check):
    wte, wpe = tables(rng, 6, 5, 9, dtype)
    ids = rng.integers(0, 6, (3, 8))
    dx = normal(rng, (3, 8, 5), dtype)
    _, cache = backend.embedding_forward(ids, wte, wpe, 1)
    dwte, dwpe = backend.embedding_backward(dx, cache)
    total = as_oracle(dx)[0].sum(axis=(0, 1))
    check.close(dwte.sum(axis=0), total, output="embedding_backward.dwte", dtype=dtype)
    check.close(dwpe.sum(axis=0), total, output="embedding_backward.dwpe", dtype=dtype)


def test_rows_outside_the_batch_get_exact_zeros(backend, dtype, rng, check):
    wte, wpe = tables(rng, 10, 3, 9, dtype)
    ids = np.array([[2, 5, 2], [7, 5, 5]])
    _, cache = backend.embedding_forward(ids, wte, wpe, 4)
    dwte, dwpe = backend.embedding_backward(normal(rng, (2, 3, 3), dtype), cache)
    unused = np.setdiff1d(np.arange(10), ids)
    check.exact(dwte[unused], np.zeros((unused.size, 3), dtype), output="unused_ids")
    outside = np.r_[0:4, 7:9]
    check.exact(dwpe[outside], np.zeros((outside.size, 3), dtype), output="outside")
    assert np.all(dwte[[2, 5, 7]] != 0) and np.all(dwpe[4:7] != 0)


def test_chunked_positions_equal_the_full_sequence(backend, dtype, rng, check):
    # incremental decoding embeds chunks at pos_offset = tokens already seen
    wte, wpe = tables(rng, 8, 4, 7, dtype)
    ids = rng.integers(0, 8, (2, 7))
    full, _ = backend.embedding_forward(ids, wte, wpe)
    parts = [
        backend.embedding_forward(ids[:, s:e], wte, wpe, s)[0]
        for s, e in ((0, 3), (3, 4), (4, 7))
    ]
    check.exact(np.concatenate(parts, axis=1), full, output="chunked")


def test_int32_and_int64_ids_agree(backend, dtype, rng, check):
    wte, wpe = tables(rng, 6, 3, 5, dtype)
    ids = rng.integers(0, 6, (2, 5))
    dx = normal(rng, (2, 5, 3), dtype)
    x32, c32 = backend.embedding_forward(ids.astype(np.int32), wte, wpe)
    x64, c64 = backend.embedding_forward(ids.astype(np.int64), wte, wpe)
    check.exact(x32, x64, output="id_dtype")
    for a, b in zip(
        backend.embedding_backward(dx, c32),
        backend.embedding_backward(dx, c64),
        strict=True,
    ):
        check.exact(a, b, output="id_dtype_backward")


def test_position_table_filled_exactly_is_fine(backend, dtype, rng):
    wte, wpe = tables(rng, 4, 2, 5, dtype)
    x, _ = backend.embedding_forward(np.zeros((1, 3), np.int64), wte, wpe, 2)
    assert x.shape == (1, 3, 2)
    with pytest.raises(ShapeError):
        backend.embedding_forward(np.zeros((1, 3), np.int64), wte, wpe, 3)
    with pytest.raises(ShapeError):
        backend.embedding_forward(np.zeros((1, 6), np.int64), wte, wpe)


def test_non_finite_table_values_propagate_only_where_used(backend, dtype, rng):
    wte, wpe = tables(rng, 4, 3, 4, dtype)
    wte[2, 1] = np.nan
    ids = np.array([[0, 2, 1, 2]])
    x, _ = backend.embedding_forward(ids, wte, wpe)
    bad = ~np.isfinite(x)
    expected = np.zeros_like(bad)
    expected[0, [1, 3], 1] = True
    assert np.array_equal(bad, expected)


def test_non_contiguous_inputs_give_the_same_result(backend, dtype, rng, check):
    wte, wpe = tables(rng, 6, 4, 8, dtype)
    ids = rng.integers(0, 6, (3, 10))
    strided = ids[:, ::2]  # (3, 5), a strided view
    wte_f, wpe_f = np.asfortranarray(wte), wpe[::-1][::-1]
    x, _ = backend.embedding_forward(strided, wte_f, wpe_f, 1)
    dense, _ = backend.embedding_forward(np.ascontiguousarray(strided), wte, wpe, 1)
    check.exact(x, dense, output="non_contiguous")


def test_outputs_and_gradients_keep_the_dtype(backend, dtype, rng):
    wte, wpe = tables(rng, 4, 3, 4, dtype)
    x, cache = backend.embedding_forward(np.zeros((1, 2), np.int32), wte, wpe)
    assert x.dtype == dtype and x.shape == (1, 2, 3)
    dwte, dwpe = backend.embedding_backward(x, cache)
    assert dwte.dtype == dtype and dwte.shape == (4, 3)
    assert dwpe.dtype == dtype and dwpe.shape == (4, 3)


def test_cache_records_the_forward(backend, dtype, rng, check):
    wte, wpe = tables(rng, 7, 3, 9, dtype)
    ids = rng.integers(0, 7, (2, 4))
    original = ids.copy()
    dx = normal(rng, (2, 4, 3), dtype)
    _, cache = backend.embedding_forward(ids, wte, wpe, 5)
    assert isinstance(cache, EmbeddingCache)
    assert (cache.vocab_size, cache.n_positions, cache.pos_offset) == (7, 9, 5)
    want = backend.embedding_backward(dx, cache)
    ids[:] = 0  # a pooled batch buffer refilled before the backward
    check.exact(cache.ids, original, output="cache_ids_copied")
    for a, b in zip(backend.embedding_backward(dx, cache), want, strict=True):
        check.exact(a, b, output="backward_after_refill")


# -------------------------------------------------- finite differences -----
def test_backward_gradcheck(backend, rng, check):
    needs_float64(backend)
    wte, wpe = tables(rng, 4, 3, 6, np.float64)
    ids = np.array([[1, 3, 1], [0, 1, 1]])
    dx = normal(rng, (2, 3, 3), np.float64)

    def f(wte_, wpe_):
        return backend.embedding_forward(ids, wte_, wpe_, 2)[0]

    _, cache = backend.embedding_forward(ids, wte, wpe, 2)
    dwte, dwpe = backend.embedding_backward(dx, cache)
    check.gradcheck(f, [wte, wpe], dx, {0: dwte, 1: dwpe}, output="embedding_backward")


# ---------------------------------------------------------- bad inputs -----
def good(dtype=np.float32):
    rng = np.random.default_rng(0)
    wte, wpe = tables(rng, 5, 3, 6, dtype)
    return rng.integers(0, 5, (2, 4)), wte, wpe


@pytest.mark.parametrize("bad_id", [5, 6, 1000, -1, -100, np.iinfo(np.int64).min])
def test_forward_rejects_ids_out_of_range(backend, bad_id):
    ids, wte, wpe = good()
    ids[1, 2] = bad_id
    with pytest.raises(IdRangeError):
        backend.embedding_forward(ids, wte, wpe)


@pytest.mark.parametrize(
    "id_dtype", [np.float32, np.float64, np.bool_, np.uint8, np.int16, np.uint64]
)
def test_forward_rejects_non_int_ids(backend, id_dtype):
    ids, wte, wpe = good()
    with pytest.raises(DTypeError):
        backend.embedding_forward(ids.astype(id_dtype), wte, wpe)


def test_forward_rejects_ids_that_are_not_arrays(backend):
    ids, wte, wpe = good()
    for bad in (ids.tolist(), None):
        with pytest.raises(DTypeError):
            backend.embedding_forward(bad, wte, wpe)


@pytest.mark.parametrize(
    "make",
    [
        lambda wte, wpe: (wte.astype(np.int32), wpe),
        lambda wte, wpe: (wte.astype(np.float16), wpe.astype(np.float16)),
        lambda wte, wpe: (wte, wpe.astype(np.float64)),
        lambda wte, wpe: (None, wpe),
    ],
    ids=["int_wte", "half", "mixed", "none"],
)
def test_forward_rejects_bad_table_dtypes(backend, make):
    ids, wte, wpe = good()
    with pytest.raises(DTypeError):
        backend.embedding_forward(ids, *make(wte, wpe))


@pytest.mark.parametrize(
    "make",
    [
        lambda ids, wte, wpe: (ids[0], wte, wpe),
        lambda ids, wte, wpe: (ids[None], wte, wpe),
        lambda ids, wte, wpe: (ids, wte[0], wpe),
        lambda ids, wte, wpe: (ids, wte, wpe[None]),
        lambda ids, wte, wpe: (ids, wte, wpe[:, :2]),
    ],
    ids=["ids_rank1", "ids_rank3", "wte_rank1", "wpe_rank3", "channels_differ"],
)
def test_forward_rejects_bad_shapes(backend, make):
    with pytest.raises(ShapeError):
        backend.embedding_forward(*make(*good()))


@pytest.mark.parametrize(
    "make",
    [
        lambda ids, wte, wpe: (ids[:0], wte, wpe),
        lambda ids, wte, wpe: (ids[:, :0], wte, wpe),
        lambda ids, wte, wpe: (ids, wte[:0], wpe),
        lambda ids, wte, wpe: (ids, wte[:, :0], wpe[:, :0]),
        lambda ids, wte, wpe: (ids, wte, wpe[:0]),
    ],
    ids=["batch", "tokens", "vocab", "channels", "positions"],
)
def test_forward_rejects_empty_inputs(backend, make):
    with pytest.raises(EmptyInputError):
        backend.embedding_forward(*make(*good()))


@pytest.mark.parametrize("pos_offset", [-1, 1.0, True, "0", None])
def test_forward_rejects_bad_pos_offset(backend, pos_offset):
    with pytest.raises(ConfigError):
        backend.embedding_forward(*good(), pos_offset)


def test_backward_rejects_bad_dx(backend):
    ids, wte, wpe = good()
    x, cache = backend.embedding_forward(ids, wte, wpe)
    for bad in (x[:1], x[:, :3], x[0], x[..., None]):
        with pytest.raises(ShapeError):
            backend.embedding_backward(bad, cache)
    with pytest.raises(DTypeError):
        backend.embedding_backward(x.astype(np.int32), cache)
    with pytest.raises(DTypeError):
        backend.embedding_backward(x, (ids, 5, 6, 0))
    with pytest.raises(EmptyInputError):
        backend.embedding_backward(x[..., :0], cache)


@pytest.mark.parametrize(
    "ids_dtype", [np.float32, np.float64, np.bool_, np.complex64, np.uint8, object]
)
def test_backward_rejects_cache_ids_that_are_not_int32_or_int64(backend, ids_dtype):
    # the C backend used to cast them silently to int64
    ids, wte, wpe = good()
    x, cache = backend.embedding_forward(ids, wte, wpe)
    bad = cache._replace(ids=np.asarray(cache.ids).astype(ids_dtype))
    with pytest.raises(DTypeError, match="cache.ids"):
        backend.embedding_backward(x, bad)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("ids", [[0, 1]], DTypeError),
        ("ids", np.zeros(3, np.int64), ShapeError),
        ("ids", np.full((2, 4), 99, np.int64), IdRangeError),
        ("vocab_size", None, ConfigError),
        ("vocab_size", 2**64, ConfigError),
        ("n_positions", 1, ShapeError),
        ("n_positions", 2.5, ConfigError),
        ("pos_offset", -1, ConfigError),
    ],
)
def test_backward_rejects_malformed_cache_fields(backend, field, value, error):
    ids, wte, wpe = good()
    x, cache = backend.embedding_forward(ids, wte, wpe)
    with pytest.raises(error):
        backend.embedding_backward(x, cache._replace(**{field: value}))


# --------------------------------------------- determinism, no mutation ----
def test_repeated_calls_are_bitwise_identical(backend, dtype, rng, check):
    wte, wpe = tables(rng, 5, 7, 9, dtype)
    ids = rng.integers(0, 5, (3, 6))
    dx = normal(rng, (3, 6, 7), dtype)
    runs = []
    for _ in range(2):
        x, cache = backend.embedding_forward(ids, wte, wpe, 1)
        runs.append((x, *backend.embedding_backward(dx, cache)))
    for a, b in zip(*runs, strict=True):
        check.exact(a, b, output="determinism")


def test_inputs_are_not_mutated(backend, dtype, rng, check):
    wte, wpe = tables(rng, 5, 3, 6, dtype)
    ids = rng.integers(0, 5, (2, 4))
    dx = normal(rng, (2, 4, 3), dtype)
    originals = [a.copy() for a in (ids, wte, wpe, dx)]
    x, cache = backend.embedding_forward(ids, wte, wpe, 1)
    backend.embedding_backward(dx, cache)
    x[:] = 0  # the output owns its memory: writing it must not reach the tables
    for a, b in zip((ids, wte, wpe, dx), originals, strict=True):
        check.exact(a, b, output="inputs_unchanged")
