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
import math
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
    ReadOnlyError,
    ShapeError,
)
from cllm_spec.protocols import AdamState, KVCache, LinearCache  # noqa: E402

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
    # a few rows (decoding) take the matrix-vector path; 3000 x 97 weights
    # split over threads, and 97 leaves a K tail for every SIMD width
    x_few, w_few = _normal(rng, 5, 97), _normal(rng, 3000, 97, scale=0.1)
    b_few = _normal(rng, 3000)
    # one decoding step of 8 sequences over 200 cached positions (8 heads)
    x_dec = _normal(rng, 8, 1, 256)
    w_qkv, w_o = _normal(rng, 768, 256, scale=0.05), _normal(rng, 256, 256, scale=0.05)
    kv = cllm_c.kv_cache_new(8, 8, 201, 32, np.float32)
    kv.k[...], kv.v[...] = _normal(rng, 8, 8, 201, 32), _normal(rng, 8, 8, 201, 32)
    kv = kv._replace(length=200)
    return {
        "linear_forward": lambda: cllm_c.linear_forward(x, w, b)[0],
        "linear_forward_float64": lambda: cllm_c.linear_forward(x64, w64, None)[0],
        "linear_forward_wide": lambda: cllm_c.linear_forward(x_wide, w_wide, None)[0],
        "linear_few_rows": lambda: cllm_c.linear_forward(x_few, w_few, b_few)[0],
        "mha_decode": lambda: (
            cllm_c.mha_forward(x_dec, w_qkv, None, w_o, None, n_head=8, kv_cache=kv)[0],
            kv.k.copy(),
            kv.v.copy(),
        ),
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


@pytest.mark.parametrize("kind", ["gelu", "gelu_tanh"])
def test_avx512_activations_are_the_avx2_bits(kind, rng, threads):
    """The 16-lane GELU is the 8-lane one lane for lane: the same bits, with
    the special values and the saturated tails, at lengths around both widths
    and the two-vector steps of the 16-lane loop."""
    if _lib.set_simd("avx512") != "avx512":
        pytest.skip("this CPU has no avx512")
    special = [np.nan, np.inf, -np.inf, 0.0, -0.0, 150.0, -150.0, 1e-30, -5.5, 9.0]
    for n in (1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 48, 49, 1000):
        x = np.resize(np.array(special, F32), n)
        x[len(special) :] = _normal(rng, max(n - len(special), 0), scale=4.0)
        dy = _normal(rng, n)
        got = {}
        for level in ("avx2+fma", "avx512"):
            _lib.set_simd(level)
            y, cache = cllm_c.activation_forward(x, kind)
            dx = cllm_c.activation_backward(dy, cache)
            got[level] = (y.tobytes(), dx.tobytes())
        assert got["avx512"] == got["avx2+fma"], (kind, n)


def test_avx512_softmax_and_cross_entropy_are_the_avx2_bits(rng, threads):
    """Their exp runs 16 lanes wide and the double sums take the 8-lane order,
    so the rows come out with the AVX2 path's bits at every row length."""
    if _lib.set_simd("avx512") != "avx512":
        pytest.skip("this CPU has no avx512")
    for v in (1, 7, 8, 9, 15, 16, 17, 31, 33, 1000):
        z = _normal(rng, 5, v, scale=6.0)
        targets = rng.integers(0, v, 5)
        got = {}
        for level in ("avx2+fma", "avx512"):
            _lib.set_simd(level)
            sm, _ = cllm_c.softmax_forward(z)
            loss, cache = cllm_c.cross_entropy_forward(z, targets)
            dz = cllm_c.cross_entropy_backward(np.ones((), F32), cache)
            got[level] = [a.tobytes() for a in (sm, np.asarray(loss), dz)]
        assert got["avx512"] == got["avx2+fma"], v


def test_gradient_sum_of_squares_is_the_same_bits_on_every_simd_level(
    rng, threads, simd_levels
):
    """Eight interleaved double sums per block, combined in a fixed order: the
    scalar, AVX2 and AVX-512 builds of it agree bit for bit, and with the
    float64 sum to rounding; lengths around the 8 lanes and the 16384 block."""
    out = _lib.ffi.new("double *")
    for n in (1, 7, 8, 9, 16383, 16385, 40001):
        g = _normal(rng, n, scale=3.0)
        got = set()
        for level in simd_levels:
            _lib.set_simd(level)
            assert _lib.lib.cllm_grad_sumsq_scaled(_lib.ptr(g), n, 0, out) == 0
            got.add(out[0])
        assert len(got) == 1, (n, got)
        want = float(np.sum(g.astype(np.float64) ** 2))
        assert abs(got.pop() - want) <= 1e-12 * want


def test_column_sums_are_the_same_bits_on_every_simd_level(rng, threads, simd_levels):
    """Bias and layer-norm parameter gradients are double sums in row order on
    every path, so each level gives the bits of the scalar twin (and the
    float64 sum, rounded once); widths around the 16-lane vectors and the
    64-column chunks. The x * y sums go through the layer norm's dweight."""
    assert simd_levels[0] == "scalar"
    for rows, cols in [(1, 1), (3, 7), (17, 16), (33, 65), (129, 100), (7, 300)]:
        dy, x = _normal(rng, rows, cols), _normal(rng, rows, cols)
        w, b = _normal(rng, cols), _normal(rng, cols)
        got = {}
        _lib.set_simd("scalar")  # one x_hat for all (its forward's bits vary by level)
        _, cache = cllm_c.layernorm_forward(x, w, b)
        for lvl in simd_levels:
            _lib.set_simd(lvl)
            db = _lib.empty((cols,), F32)
            assert _lib.lib.cllm_column_sum(_lib.ptr(dy), _lib.ptr(db), rows, cols) == 0
            _, dw, dbias = cllm_c.layernorm_backward(dy, cache)
            got[lvl] = (db, dw, dbias)
        for lvl in simd_levels:
            for one, base in zip(got[lvl], got["scalar"], strict=True):
                assert one.tobytes() == base.tobytes(), (lvl, rows, cols)
        want = dy.astype(np.float64).sum(0).astype(F32)
        np.testing.assert_array_equal(got["scalar"][0], want)


@pytest.mark.parametrize("simd", ["scalar", "avx2+fma", "avx512"])
def test_few_row_linear_on_every_simd_level(simd, rng, threads):
    """The matrix-vector path of each level (the suite runs only the best and
    scalar ones), at every M it takes and K, N around every vector width."""
    if _lib.set_simd(simd) != simd:
        pytest.skip(f"this CPU has no {simd}")
    for m in (1, 2, 3, 4, 5, 8, 9, 15, 16, 17):
        for k in (1, 7, 8, 9, 15, 16, 17, 33, 65):
            for n in (1, 3, 4, 5, 17):
                x, w, b = _normal(rng, m, k), _normal(rng, n, k), _normal(rng, n)
                y, _ = cllm_c.linear_forward(x, w, b)
                want, _ = ref.linear_forward(*(a.astype(np.float64) for a in (x, w, b)))
                np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_model_kernels_forward_computes_what_the_checked_kernels_do(rng):
    """``cllm_c.model_kernels`` (what model.forward runs after validating once)
    is the checked kernels minus their checks: the same bits, decoding included."""
    x = _normal(rng, 2, 3, 16)
    w_qkv, b_qkv = _normal(rng, 48, 16, scale=0.2), _normal(rng, 48)
    w_o, b_o = _normal(rng, 16, 16, scale=0.2), _normal(rng, 16)
    w_fc, b_fc = _normal(rng, 40, 16, scale=0.2), _normal(rng, 40)
    w_pr, b_pr = _normal(rng, 16, 40, scale=0.2), _normal(rng, 16)
    ids = rng.integers(0, 50, (2, 3))
    wte, wpe = _normal(rng, 50, 16), _normal(rng, 9, 16)
    u = cllm_c.model_kernels

    def mha(fn, cache):  # a prefill of 3, then a decoding step of 1
        y1, _, cache = fn(x, w_qkv, b_qkv, w_o, b_o, n_head=4, kv_cache=cache)
        y2, _, cache = fn(x[:, :1], w_qkv, b_qkv, w_o, b_o, n_head=4, kv_cache=cache)
        return y1, y2, cache.k.copy(), cache.v.copy()

    pairs = [
        (u.linear_forward(x, w_qkv, b_qkv), cllm_c.linear_forward(x, w_qkv, b_qkv)),
        (
            u.layernorm_forward(x, w_o[0], b_o, 1e-5),
            cllm_c.layernorm_forward(x, w_o[0], b_o),
        ),
        (
            u.ffn_forward(x, w_fc, b_fc, w_pr, b_pr, activation="gelu"),
            cllm_c.ffn_forward(x, w_fc, b_fc, w_pr, b_pr, activation="gelu"),
        ),
        (
            u.embedding_forward(ids, wte, wpe, 2),
            cllm_c.embedding_forward(ids, wte, wpe, 2),
        ),
        (
            mha(u.mha_forward, cllm_c.kv_cache_new(2, 4, 5, 4, np.float32)),
            mha(cllm_c.mha_forward, cllm_c.kv_cache_new(2, 4, 5, 4, np.float32)),
        ),
    ]
    for fast, checked in pairs:
        got, want = _flatten(fast), _flatten(checked)
        assert len(got) == len(want) > 0
        for a, b in zip(got, want, strict=True):
            assert a.tobytes() == b.tobytes()


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
    """Stands in for the compiled library: any kernel call fails the test.

    The finite scan is let through: it is part of the validation (it reads
    the array the wrapper's checks found well-formed, and only says whether a
    NaN or inf is in it), so it runs before a non-finite input is refused.
    """

    def __getattr__(self, name: str) -> Any:
        if name.startswith("CLLM_") or name.startswith("cllm_all_finite"):
            return getattr(REAL_LIB, name)
        raise AssertionError(f"bad input reached C: lib.{name} was called")


def _bytes_buffers(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Two float32 arrays over the memory of immutable ``bytes`` objects."""
    n = int(np.prod(shape)) * 4
    return tuple(np.frombuffer(bytes(n), F32).reshape(shape) for _ in range(2))


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
    # (a non-finite float32 optimizer input does reach C: the step kernel
    # scans its inputs as it reads them; tests/test_c_optim_finite.py)
    (
        "adam non-finite float64 grads",
        lambda: cllm_c.adam_step(
            np.ones(3, np.float64),
            np.array([1.0, np.inf, 0.0]),
            AdamState(*(np.zeros(3) for _ in range(3)), 0),
        ),
        NonFiniteError,
    ),
    (
        "kv append into bytes",
        lambda: cllm_c.kv_cache_append(
            KVCache(*_bytes_buffers((1, 2, 4, 3)), 0), *[np.ones((1, 2, 1, 3), F32)] * 2
        ),
        ReadOnlyError,
    ),
    (
        "mha through a read-only cache",
        lambda: cllm_c.mha_forward(
            np.ones((1, 2, 6), F32),
            np.ones((18, 6), F32),
            None,
            np.ones((6, 6), F32),
            None,
            n_head=2,
            kv_cache=KVCache(*_bytes_buffers((1, 2, 4, 3)), 1),
        ),  # fmt: skip
        ReadOnlyError,
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


def test_c_writes_into_no_read_only_buffer_even_unvalidated():
    # _append is the in-place write behind kv_cache_append and mha_forward; even
    # called without the spec's checks it refuses memory it must not write
    k_buf, v_buf = _bytes_buffers((1, 2, 4, 3))
    k = np.ones((1, 2, 1, 3), F32)
    with pytest.raises(ReadOnlyError):
        cllm_c.attention._append(KVCache(k_buf, v_buf, 0), k, k)
    assert not k_buf.any() and not v_buf.any()
    with pytest.raises(ReadOnlyError):
        _lib.out_ptr("x", np.frombuffer(bytes(8), F32))
    writeable = np.zeros(2, F32)
    assert _lib.ffi.sizeof(_lib.out_ptr("x", writeable)) == 8


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
            c = _lib.empty((m, n), F32)
            status = lib.cllm_sgemm(ta, 1, m, n, k, _lib.ptr(a), a.shape[1],
                                    _lib.ptr(b), k, _lib.ptr(c), n, 0,
                                    _lib.ffi.NULL)  # fmt: skip
            assert status == lib.CLLM_OK
            outs.append(c)
    finally:
        assert lib.cllm_gemm_set_blocking(384, 240, 3072) == lib.CLLM_OK
        _lib.set_num_threads(before)
    want = (a.T if ta else a).astype(np.float64) @ b.T.astype(np.float64)
    np.testing.assert_allclose(outs[0], want, rtol=1e-4, atol=1e-4)
    for c in outs[1:]:
        np.testing.assert_array_equal(c, outs[0])


@pytest.mark.parametrize("shape", [(3,), (5, 7), (5000, 3), (20000,), (2100, 1008)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_outputs_start_on_a_cache_line(shape, dtype):
    # (3,) and (5, 7) are under ALIGN_MIN_BYTES: NumPy's own alignment; the
    # others take the aligned, the recycled and the huge-page paths
    out = _lib.empty(shape, dtype)
    assert out.shape == shape and out.dtype == dtype
    if out.nbytes >= _lib.ALIGN_MIN_BYTES:
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


# ---------------------------------------------- model kernels, recycling ----
def _model_case(rng: np.random.Generator, tied: bool) -> tuple[Any, ...]:
    from cllm_spec.model import ModelConfig, init_params

    cfg = ModelConfig(
        vocab_size=37, n_embd=32, n_layer=2, n_head=4, block_size=16,
        activation="gelu", tie_embeddings=tied,
    )  # fmt: skip
    params = init_params(cfg, rng, F32)
    ids = rng.integers(0, 37, (3, 16))
    targets = rng.integers(0, 37, (3, 16))
    targets[0, :4] = -100
    return cfg, params, ids, targets


def _plain(backend: Any) -> Any:
    """The backend without its model kernels: the model's plain composition."""
    from types import SimpleNamespace

    names = [n for n in dir(backend) if not n.startswith("_") and n != "model_kernels"]
    return SimpleNamespace(**{n: getattr(backend, n) for n in names})


@pytest.mark.parametrize("tied", [True, False])
def test_model_kernels_compute_the_plain_composition(rng, tied):
    """Same kernels, so the same bits, except the tied wte gradient, whose two
    terms (LM head, lookup) are added in the other order."""
    from cllm_spec.model import backward, forward, param_views

    cfg, params, ids, targets = _model_case(rng, tied)
    runs = []
    for backend in (cllm_c, _plain(cllm_c)):
        logits, loss, cache = forward(backend, cfg, params, ids, targets)
        runs.append(
            (logits, loss, param_views(cfg, backward(backend, cfg, params, cache)))
        )
    (fast_logits, fast_loss, fast), (logits, loss, plain) = runs
    np.testing.assert_array_equal(fast_logits, logits)
    assert fast_loss == loss
    for name, grad in plain.items():
        if tied and name == "model.wte.weight":
            np.testing.assert_allclose(fast[name], grad, rtol=1e-6, atol=1e-8)
        else:
            np.testing.assert_array_equal(fast[name], grad, err_msg=name)


def test_model_step_bits_do_not_depend_on_the_thread_count(rng, threads):
    from cllm_spec.model import backward, forward

    cfg, params, ids, targets = _model_case(rng, True)
    results = []
    for n in (1, 2, 3):
        _lib.set_num_threads(n)
        logits, loss, cache = forward(cllm_c, cfg, params, ids, targets)
        results.append((logits, loss, backward(cllm_c, cfg, params, cache)))
    for logits, loss, grads in results[1:]:
        np.testing.assert_array_equal(logits, results[0][0])
        assert loss == results[0][1]
        np.testing.assert_array_equal(grads, results[0][2])


def test_recycled_output_buffers_return_only_when_every_view_is_gone():
    shape = (_lib.RECYCLE_MIN_BYTES // 4 + 7,)
    first = _lib.empty(shape, np.dtype(F32))
    first[:] = 1.0
    address = first.ctypes.data
    view = first[3:]
    del first
    second = _lib.empty(shape, np.dtype(F32))  # the view still holds the buffer
    assert second.ctypes.data != address
    second[:] = 2.0
    np.testing.assert_array_equal(view, 1.0)
    del view
    third = _lib.empty(shape, np.dtype(F32))
    assert third.ctypes.data == address
    assert third.flags.writeable and third.flags.c_contiguous
    assert third.shape == shape


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


def test_a_steps_worth_of_big_buffers_is_mapped_once():
    # A training step frees its big outputs and the next step asks for the
    # same sizes again: every one must come back from the cache of mappings
    # (mapping afresh costs page faults and the kernel's zeroing of each huge
    # page: 7% of a production step when only 32 of its ~60 buffers fit).
    lib = _lib.lib
    sizes = [(8 << 20) + (i % 5) * (2 << 20) for i in range(96)]  # 0.9 GiB
    first = [lib.cllm_big_alloc(n) for n in sizes]
    assert all(p != _lib.ffi.NULL for p in first)
    addresses = {int(_lib.ffi.cast("uintptr_t", p)) for p in first}
    for p in first:
        lib.cllm_big_free(p)
    again = [lib.cllm_big_alloc(n) for n in sizes]
    try:
        assert {int(_lib.ffi.cast("uintptr_t", p)) for p in again} == addresses
    finally:
        for p in again:
            lib.cllm_big_free(p)


def test_the_c_backends_scan_serves_its_validation(monkeypatch):
    # the step's NaN checks of params, gradients and Adam state go through the
    # backend's all_finite when it has one (else NumPy's sum, several times
    # slower on large buffers)
    import cllm_c.checks
    import cllm_c.optim

    from cllm_spec.model import ModelConfig, init_params, validate_params
    from cllm_spec.protocols import AdamState
    from cllm_spec.registry import get_backend

    seen = []
    real = cllm_c.checks.all_finite

    def spy(x):
        seen.append(x.size)
        return real(x)

    c = get_backend("c")
    monkeypatch.setattr(c, "all_finite", spy)
    monkeypatch.setattr(cllm_c.optim, "all_finite", spy)
    cfg = ModelConfig(vocab_size=11, n_embd=8, n_layer=1, n_head=2, block_size=4)
    p = init_params(cfg, np.random.default_rng(0), np.float32)
    validate_params(c, cfg, p)
    assert seen == [p.size]
    state = AdamState(np.zeros_like(p), np.zeros_like(p), np.zeros_like(p), 0)
    c.adamw_step(p, np.ones_like(p), state, lr=0.1)
    assert seen[1:] == []  # float32: the step kernel scans what it reads
    p64 = p.astype(np.float64)
    state64 = AdamState(*(np.zeros_like(p64) for _ in range(3)), 0)
    c.adamw_step(p64, np.ones_like(p64), state64, lr=0.1)
    assert seen[1:] == [p.size] * 5  # params, grads, exp_avg, exp_avg_sq, max
