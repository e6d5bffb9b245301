"""The C backend's matrix product (``cllm_sgemm``) against NumPy.

Tails and transposes, every size around the micro-kernel tiles read through
strides wider than the matrix, any block sizes with the same bits on 1, 2
and 3 threads, and a big output written with streamed stores.

The whole module is skipped when the extension is not built.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

pytest.importorskip("cllm_c", reason="the C extension is not built")

from cllm_c import _lib  # noqa: E402

from tests import c_backend_helpers  # noqa: E402
from tests.c_backend_helpers import F32, _normal  # noqa: E402

# pytest finds a test's fixtures among its module's names
rng = c_backend_helpers.rng


def test_gemm_tails_and_transposes_against_numpy(rng):
    lib = _lib.lib
    for m, n, k in [(1, 1, 1), (7, 17, 3), (65, 33, 31), (13, 100, 400)]:
        for ta in (0, 1):
            for tb in (0, 1):
                a = _normal(rng, *((k, m) if ta else (m, k)))
                b = _normal(rng, *((n, k) if tb else (k, n)))
                c = _normal(rng, m, n)
                c0 = c.copy()
                status = lib.cllm_sgemm(ta, tb, m, n, k, _lib.ptr(a), a.shape[1],
                                        _lib.ptr(b), b.shape[1], _lib.ptr(c), n,
                                        1, _lib.ffi.NULL)  # fmt: skip
                assert status == lib.CLLM_OK
                want = c0.astype(np.float64) + (a.T if ta else a).astype(np.float64) @ (
                    b.T if tb else b
                ).astype(np.float64)
                np.testing.assert_allclose(c, want, rtol=1e-4, atol=1e-4)


EDGE_SIZES = (1, 3, 7, 15, 16, 17, 31, 33, 63, 65)


@pytest.mark.parametrize("simd", ["scalar", "avx2+fma", "best"])
def test_gemm_every_edge_size_transpose_and_stride(simd, rng):
    # Sizes around the micro-kernel tiles (12 x 32, 6 x 16) and the 16-wide
    # packing transposes, in each dimension, read through strides wider than
    # the matrix: a packer that reads a neighbour row or drops a tail shows.
    lib = _lib.lib
    before = _lib.simd_level()
    _lib.set_simd(_lib.simd_detected() if simd == "best" else simd)
    try:
        for i, (m, n, k) in enumerate(itertools.product(EDGE_SIZES, repeat=3)):
            ta, tb, acc = i % 2, (i // 2) % 2, (i // 4) % 3
            a = _normal(rng, *((k, m + 3) if ta else (m, k + 5)))
            b = _normal(rng, *((n, k + 2) if tb else (k, n + 7)))
            c = _normal(rng, m, n + 1)
            bias = _normal(rng, n)
            c0 = c.copy()
            bias_ptr = _lib.ptr(bias) if acc == 2 else _lib.ffi.NULL
            status = lib.cllm_sgemm(ta, tb, m, n, k, _lib.ptr(a), a.shape[1],
                                    _lib.ptr(b), b.shape[1], _lib.ptr(c), n + 1,
                                    int(acc == 1), bias_ptr)  # fmt: skip
            assert status == lib.CLLM_OK
            op_a = (a[:, :m].T if ta else a[:, :k]).astype(np.float64)
            op_b = (b[:, :k].T if tb else b[:, :n]).astype(np.float64)
            init = c0[:, :n] if acc == 1 else (bias if acc == 2 else 0.0)
            where = f"{m=} {n=} {k=} {ta=} {tb=} {acc=}"
            want = init + op_a @ op_b
            np.testing.assert_allclose(
                c[:, :n], want, rtol=1e-4, atol=1e-4, err_msg=where
            )
            # the column between rows (ldc = n + 1) is left alone
            np.testing.assert_array_equal(c[:, n], c0[:, n], err_msg=where)
    finally:
        _lib.set_simd(before)


def _times_b_transposed(
    ta: int, a: np.ndarray, b: np.ndarray, m: int, n: int, k: int
) -> np.ndarray:
    """op(a) (m, k) @ b^T into a fresh (m, n) output; b is stored (n, k)."""
    c = _lib.empty((m, n), F32)
    status = _lib.lib.cllm_sgemm(ta, 1, m, n, k, _lib.ptr(a), a.shape[1],
                                 _lib.ptr(b), k, _lib.ptr(c), n, 0,
                                 _lib.ffi.NULL)  # fmt: skip
    assert status == _lib.lib.CLLM_OK
    return c


@pytest.mark.parametrize(
    "m, n, k, ta",
    [
        (100, 4000, 249, 0),
        (100, 4000, 249, 1),
        (1000, 100, 249, 0),
        (1000, 100, 249, 1),
    ],
)
def test_gemm_any_blocking_is_correct_and_thread_independent(rng, m, n, k, ta):
    # The block sizes are a benchmark knob; odd ones (a KC that is no multiple
    # of 16, an NC of two micro-panels) still give the product, with the same
    # bits for 1, 2 and 3 threads. 100 x 4000 splits C by columns, 1000 x 100
    # by rows; both leave a last micro-panel of A with fewer than 12 rows (read
    # in place when A is not transposed, packed when it is). Split by rows, a
    # transposed A (a weight gradient) takes fewer, taller blocks, here more
    # than the threads need to keep each within MC. An NC that ends inside a
    # micro-panel is refused.
    lib = _lib.lib
    a, b = _normal(rng, *((k, m) if ta else (m, k))), _normal(rng, n, k)
    before = _lib.num_threads()
    outs = []
    assert lib.cllm_gemm_set_blocking(100, 96, 36) == lib.CLLM_ERR_ARG
    assert lib.cllm_gemm_set_blocking(100, 96, 64) == lib.CLLM_OK
    try:
        for threads in (1, 2, 3):
            _lib.set_num_threads(threads)
            outs.append(_times_b_transposed(ta, a, b, m, n, k))
    finally:
        assert lib.cllm_gemm_set_blocking(384, 240, 3072) == lib.CLLM_OK
        _lib.set_num_threads(before)
    want = (a.T if ta else a).astype(np.float64) @ b.T.astype(np.float64)
    np.testing.assert_allclose(outs[0], want, rtol=1e-4, atol=1e-4)
    for c in outs[1:]:
        np.testing.assert_array_equal(c, outs[0])


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_streamed_output_matches_the_cached_path(rng, trans_b):
    # An output of 4 MB or more, 64-byte aligned and written once (one K slice,
    # no accumulate), is stored with non-temporal stores by the AVX-512 kernel.
    # It must hold the same bits as the same product added onto zeros (cached
    # stores: 0 + s == s), and match float64 with a bias too; M and N leave
    # partial tiles on both edges.
    lib = _lib.lib
    m, n, k = 2101, 1008, 40
    a = _normal(rng, m, k)
    b = _normal(rng, *((n, k) if trans_b else (k, n)))
    bias = _normal(rng, n)
    op_b = (b.T if trans_b else b).astype(np.float64)

    def gemm(out: np.ndarray, accumulate: int, bias_ptr: Any) -> None:
        ptrs = _lib.ptr(a), _lib.ptr(b), _lib.ptr(out)
        status = lib.cllm_sgemm(0, trans_b, m, n, k, ptrs[0], k, ptrs[1], b.shape[1],
                                ptrs[2], n, accumulate, bias_ptr)  # fmt: skip
        assert status == lib.CLLM_OK

    streamed = _lib.empty((m, n), F32)  # a big allocation: 64-byte aligned
    assert streamed.ctypes.data % 64 == 0
    cached = np.zeros((m, n), F32)
    gemm(streamed, 0, _lib.ffi.NULL)
    gemm(cached, 1, _lib.ffi.NULL)
    np.testing.assert_array_equal(streamed, cached)
    np.testing.assert_allclose(
        streamed, a.astype(np.float64) @ op_b, rtol=1e-4, atol=1e-4
    )
    gemm(streamed, 0, _lib.ptr(bias))
    want = bias + a.astype(np.float64) @ op_b
    np.testing.assert_allclose(streamed, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n", [128, 384, 1000, 2100])
@pytest.mark.parametrize("threads", [1, 2])
def test_gemm_a_read_in_place_has_the_packed_bits(rng, n, threads):
    # The AVX-512 kernel reads a row-major A where it is stored, up to N =
    # 2048 (256 on Intel cores, gemm.c); a transposed A is always packed
    # first. The kernel does the same multiply-adds in the same order on
    # both, so A and a transposed copy of it give the same bits: over two K
    # slices (accumulating into C), with a last micro-panel of fewer than 12
    # rows, split by rows (M > N) and by columns, and past the limit (2100),
    # where both are packed.
    m, k = (2 * n + 5, 500) if n < 1000 else (53, 500)
    a = _normal(rng, m, k)
    a_t = np.ascontiguousarray(a.T)
    b = _normal(rng, n, k)
    before = _lib.num_threads()
    outs = []
    try:
        _lib.set_num_threads(threads)
        for ta, a_op in ((0, a), (1, a_t)):
            outs.append(_times_b_transposed(ta, a_op, b, m, n, k))
    finally:
        _lib.set_num_threads(before)
    np.testing.assert_array_equal(outs[0], outs[1])
    want = a.astype(np.float64) @ b.T.astype(np.float64)
    np.testing.assert_allclose(outs[0], want, rtol=1e-4, atol=1e-4)
