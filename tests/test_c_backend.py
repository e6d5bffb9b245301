"""Properties of the C backend that the conformance suite cannot see.

- thread-count invariance: every kernel gives the same bits with 1, 2 and 3
  threads (fixed reduction order), on shapes large enough to use them;
- the scalar path and the SIMD path both match the float64 reference, and
  ``CLLM_C_SCALAR`` / ``CLLM_NUM_THREADS`` are honoured at import;
- bad input never reaches C: the wrapper raises the spec's typed error before
  any kernel is called;
- C checks sizes and ids again on its own and reports a status, never crashes.

The whole module is skipped when the extension is not built.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

cllm_c = pytest.importorskip("cllm_c", reason="the C extension is not built")

import cllm_numpy as ref  # noqa: E402
from cllm_c import _lib  # noqa: E402

from cllm_spec.errors import (  # noqa: E402
    DTypeError,
    EmptyInputError,
    IdRangeError,
    NonFiniteError,
    ShapeError,
)
from cllm_spec.protocols import AdamState, LinearCache  # noqa: E402

F32 = np.float32


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


@pytest.fixture
def threads() -> Iterator[None]:
    """Restore the thread count and SIMD level a test changes."""
    saved_threads, saved_simd = _lib.num_threads(), _lib.simd_level()
    yield
    _lib.set_num_threads(saved_threads)
    _lib.set_simd(saved_simd)


def _normal(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (scale * rng.standard_normal(shape)).astype(F32)


def _flatten(result: Any) -> list[np.ndarray]:
    """Every array in a (possibly nested) result, in order."""
    if isinstance(result, np.ndarray):
        return [result]
    if isinstance(result, tuple | list):
        return [a for item in result for a in _flatten(item)]
    if isinstance(result, float | int):
        return [np.asarray(result)]
    return []


# ------------------------------------------------------- the workloads -----
def _workloads(rng: np.random.Generator) -> dict[str, Callable[[], Any]]:
    """One call per kernel, on shapes that split over several threads."""
    n, c, f, v = 300, 96, 200, 1000
    x = _normal(rng, 3, n // 3, c)
    w, b = _normal(rng, f, c, scale=0.1), _normal(rng, f)
    _, lin = cllm_c.linear_forward(x, w, b)
    dy = _normal(rng, 3, n // 3, f)
    h = _normal(rng, 40000)
    _, gelu = cllm_c.activation_forward(h, "gelu")
    lnw, lnb = _normal(rng, c), _normal(rng, c)
    _, ln = cllm_c.layernorm_forward(x, lnw, lnb)
    logits = _normal(rng, n, v, scale=3.0)
    targets = rng.integers(0, v, n).astype(np.int32)
    targets[::7] = -100
    _, ce = cllm_c.cross_entropy_forward(logits, targets, label_smoothing=0.1)
    q, k, vv = (_normal(rng, 4, 3, 50, 16) for _ in range(3))
    _, att = cllm_c.attention_forward(q, k, vv)
    p = _normal(rng, 200000)
    g = _normal(rng, 200000)
    zeros = np.zeros_like(p)
    state = AdamState(zeros, zeros.copy(), zeros.copy(), 3)
    ids = rng.integers(0, 500, (4, 64))
    wte, wpe = _normal(rng, 500, 32), _normal(rng, 64, 32)
    _, emb = cllm_c.embedding_forward(ids, wte, wpe)
    dx_emb = _normal(rng, 4, 64, 32)
    bufs = [_normal(rng, 100000) for _ in range(5)]
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    # N > M: the GEMM splits columns and shares the packed A (the other cases
    # above split rows and share the packed B)
    x_wide, w_wide = _normal(rng, 40, 96), _normal(rng, 2000, 96, scale=0.1)
    return {
        "linear_forward": lambda: cllm_c.linear_forward(x, w, b)[0],
        "linear_forward_float64": lambda: cllm_c.linear_forward(x64, w64, None)[0],
        "linear_forward_wide": lambda: cllm_c.linear_forward(x_wide, w_wide, None)[0],
        "linear_backward": lambda: cllm_c.linear_backward(dy, lin),
        "gelu_forward": lambda: cllm_c.activation_forward(h, "gelu")[0],
        "gelu_backward": lambda: cllm_c.activation_backward(h, gelu),
        "layernorm_forward": lambda: cllm_c.layernorm_forward(x, lnw, lnb)[:1],
        "layernorm_backward": lambda: cllm_c.layernorm_backward(x, ln),
        "softmax": lambda: cllm_c.softmax_forward(logits)[0],
        "cross_entropy_forward": lambda: cllm_c.cross_entropy_forward(
            logits, targets, label_smoothing=0.1
        ),
        "cross_entropy_backward": lambda: cllm_c.cross_entropy_backward(
            np.array(1.5, F32), ce
        ),
        "mse_forward": lambda: cllm_c.mse_forward(p, g)[0],
        "attention_forward": lambda: cllm_c.attention_forward(q, k, vv),
        "attention_backward": lambda: cllm_c.attention_backward(q, att),
        "adamw_step": lambda: cllm_c.adamw_step(p, g, state, lr=1e-3),
        "grad_stats": lambda: tuple(cllm_c.grad_stats(g)),
        "grad_global_norm": lambda: cllm_c.grad_global_norm(g),
        "grad_tree_reduce": lambda: cllm_c.grad_tree_reduce(bufs),
        "embedding_backward": lambda: cllm_c.embedding_backward(dx_emb, emb),
    }


WORKLOADS = list(_workloads(np.random.default_rng(0)))


@pytest.mark.parametrize("kernel", WORKLOADS)
@pytest.mark.parametrize("simd", ["best", "scalar"])
def test_bits_do_not_depend_on_the_thread_count(kernel, simd, rng, threads):
    _lib.set_simd(_lib.simd_detected() if simd == "best" else simd)
    run = _workloads(rng)[kernel]
    results = {}
    for n in (1, 2, 3):
        _lib.set_num_threads(n)
        results[n] = _flatten(run())
    assert results[1], "the workload returned no array"
    for n in (2, 3):
        for one, many in zip(results[1], results[n], strict=True):
            assert one.dtype == many.dtype and one.shape == many.shape
            assert one.tobytes() == many.tobytes(), f"{kernel}: 1 vs {n} threads"


# ----------------------------------------------------- scalar and SIMD -----
@pytest.mark.parametrize("simd", ["scalar", "best"])
def test_both_paths_match_the_float64_reference(simd, rng, threads):
    _lib.set_simd(_lib.simd_detected() if simd == "best" else simd)
    x, w, b = _normal(rng, 37, 65), _normal(rng, 33, 65), _normal(rng, 33)
    y, _ = cllm_c.linear_forward(x, w, b)
    want, _ = ref.linear_forward(*(a.astype(np.float64) for a in (x, w, b)))
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
    for kind in ("gelu", "gelu_tanh", "relu"):
        h = _normal(rng, 1001, scale=4.0)
        got, _ = cllm_c.activation_forward(h, kind)
        want, _ = ref.activation_forward(h.astype(np.float64), kind)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    z = _normal(rng, 9, 1003, scale=5.0)
    got, _ = cllm_c.log_softmax_forward(z)
    want, _ = ref.log_softmax_forward(z.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_the_simd_path_is_the_best_the_cpu_has():
    info = cllm_c.build_info()
    assert info["simd_detected"] in ("scalar", "avx2+fma", "avx512")
    if os.environ.get("CLLM_C_SCALAR", "0") not in ("", "0"):
        assert info["simd"] == "scalar"
    else:
        assert info["simd"] == info["simd_detected"]
    assert info["threads"] >= 1


def _import_info(env: dict[str, str]) -> dict[str, Any]:
    code = "import json, cllm_c; print(json.dumps(cllm_c.build_info()))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout))


def test_environment_selects_scalar_and_threads():
    info = _import_info({"CLLM_C_SCALAR": "1", "CLLM_NUM_THREADS": "3"})
    assert info["simd"] == "scalar" and info["threads"] == 3


def test_bad_thread_count_in_the_environment_is_a_clear_error():
    code = "import cllm_c"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "CLLM_NUM_THREADS": "zero"},
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and "CLLM_NUM_THREADS" in out.stderr


# --------------------------------------------- bad input never reaches C ---
REAL_LIB = _lib.lib


class _Tripwire:
    """Stands in for the compiled library: any kernel call fails the test."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("CLLM_"):
            return getattr(REAL_LIB, name)
        raise AssertionError(f"bad input reached C: lib.{name} was called")


BAD_CALLS: list[tuple[str, Callable[[], Any], type[Exception]]] = [
    (
        "linear x/w mismatch",
        lambda: cllm_c.linear_forward(np.ones((2, 3), F32), np.ones((4, 5), F32), None),
        ShapeError,
    ),
    (
        "linear int x",
        lambda: cllm_c.linear_forward(
            np.ones((2, 3), np.int32), np.ones((4, 3), F32), None
        ),
        DTypeError,
    ),
    (
        "layernorm empty",
        lambda: cllm_c.layernorm_forward(
            np.ones((0, 3), F32), np.ones(3, F32), np.zeros(3, F32)
        ),
        EmptyInputError,
    ),
    (
        "cross-entropy target out of range",
        lambda: cllm_c.cross_entropy_forward(
            np.zeros((2, 5), F32), np.array([1, 5], np.int64)
        ),
        IdRangeError,
    ),
    (
        "cross-entropy NaN logits",
        lambda: cllm_c.cross_entropy_forward(
            np.array([[0.0, np.nan]], F32), np.array([1], np.int64)
        ),
        NonFiniteError,
    ),
    (
        "embedding negative id",
        lambda: cllm_c.embedding_forward(
            np.array([[0, -1]]), np.ones((4, 2), F32), np.ones((3, 2), F32)
        ),
        IdRangeError,
    ),
    (
        "attention rank",
        lambda: cllm_c.attention_forward(
            np.ones((2, 3, 4), F32), np.ones((2, 3, 4), F32), np.ones((2, 3, 4), F32)
        ),
        ShapeError,
    ),
    (
        "mse shapes",
        lambda: cllm_c.mse_forward(np.ones(3, F32), np.ones(4, F32)),
        ShapeError,
    ),
    (
        "adam non-finite grads",
        lambda: cllm_c.adam_step(
            np.ones(3, F32),
            np.array([1.0, np.inf, 0.0], F32),
            AdamState(*(np.zeros(3, F32) for _ in range(3)), 0),
        ),
        NonFiniteError,
    ),
    (
        "tree reduce lengths",
        lambda: cllm_c.grad_tree_reduce([np.ones(3, F32), np.ones(4, F32)]),
        ShapeError,
    ),
]


@pytest.mark.parametrize(
    ("call", "error"),
    [(c, e) for _, c, e in BAD_CALLS],
    ids=[name for name, _, _ in BAD_CALLS],
)
def test_bad_input_never_reaches_c(monkeypatch, call, error):
    # every wrapper reaches the kernels through cllm_c._lib.lib
    monkeypatch.setattr("cllm_c._lib.lib", _Tripwire())
    with pytest.raises(error):
        call()


# -------------------------------------------------- C checks on its own ----
def test_c_rejects_out_of_range_ids_itself():
    ids = np.array([0, 7], dtype=np.int64)
    wte, wpe = np.ones((4, 2), F32), np.ones((3, 2), F32)
    x = np.empty((1, 2, 2), F32)
    lib, ffi = _lib.lib, _lib.ffi
    status = lib.cllm_embedding_forward(
        ffi.from_buffer("int64_t[]", ids), _lib.ptr(wte), _lib.ptr(wpe),
        1, 2, 2, 4, 3, 0, _lib.ptr(x),
    )  # fmt: skip
    assert status == lib.CLLM_ERR_ID_RANGE
    with pytest.raises(IdRangeError):
        _lib.check(status, "embedding")


def test_c_rejects_bad_sizes_with_a_status():
    lib, ffi = _lib.lib, _lib.ffi
    a = np.ones(4, F32)
    status = lib.cllm_sgemm(0, 0, 2, 2, -1, _lib.ptr(a), 2, _lib.ptr(a), 2,
                            _lib.ptr(a), 2, 0, ffi.NULL)  # fmt: skip
    assert status == lib.CLLM_ERR_ARG
    assert lib.cllm_set_num_threads(0) == lib.CLLM_ERR_ARG
    text = ffi.string(lib.cllm_strerror(lib.CLLM_ERR_ID_RANGE)).decode()
    assert "range" in text


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


def test_gemm_any_blocking_is_correct_and_thread_independent(rng):
    # The block sizes are a benchmark knob; odd ones (a KC that is no multiple
    # of 16, an NC of two micro-panels) still give the product, with the same
    # bits for 1, 2 and 3 threads (100 x 4000 splits C by columns). An NC that
    # ends inside a micro-panel is refused.
    lib = _lib.lib
    m, n, k = 100, 4000, 249
    a, b = _normal(rng, m, k), _normal(rng, n, k)
    before = _lib.num_threads()
    outs = []
    assert lib.cllm_gemm_set_blocking(100, 96, 36) == lib.CLLM_ERR_ARG
    assert lib.cllm_gemm_set_blocking(100, 96, 64) == lib.CLLM_OK
    try:
        for threads in (1, 2, 3):
            _lib.set_num_threads(threads)
            c = _lib.empty((m, n), F32)
            status = lib.cllm_sgemm(0, 1, m, n, k, _lib.ptr(a), k, _lib.ptr(b), k,
                                    _lib.ptr(c), n, 0, _lib.ffi.NULL)  # fmt: skip
            assert status == lib.CLLM_OK
            outs.append(c)
    finally:
        assert lib.cllm_gemm_set_blocking(384, 240, 3072) == lib.CLLM_OK
        _lib.set_num_threads(before)
    want = a.astype(np.float64) @ b.T.astype(np.float64)
    np.testing.assert_allclose(outs[0], want, rtol=1e-4, atol=1e-4)
    for c in outs[1:]:
        np.testing.assert_array_equal(c, outs[0])


@pytest.mark.parametrize("shape", [(3,), (5, 7), (1000, 3), (2100, 1008)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_outputs_start_on_a_cache_line(shape, dtype):
    out = _lib.empty(shape, dtype)
    assert out.shape == shape and out.dtype == dtype
    assert out.ctypes.data % 64 == 0
    out[...] = 1  # writable, and all of it is there
    assert out.sum() == out.size


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


def test_inconsistent_cache_is_caught_before_c():
    # The spec's validator compares dy with the cache's x and w[0] only; x's last
    # dimension disagreeing with w would make C read past dy. The wrapper stops it.
    cache = LinearCache(np.ones((2, 3), F32), np.ones((4, 2), F32), True)
    with pytest.raises(ShapeError):
        cllm_c.linear_backward(np.ones((2, 4), F32), cache)
    mixed = LinearCache(np.ones((2, 3), F32), np.ones((4, 3), np.float64), False)
    with pytest.raises(DTypeError):
        cllm_c.linear_backward(np.ones((2, 4), F32), mixed)
