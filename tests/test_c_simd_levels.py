"""The C backend's SIMD levels against the reference and one another.

- the scalar path and the best SIMD path both match the float64 reference,
  and so does the few-row linear on every level;
- the AVX-512 activations, softmax and cross-entropy give the AVX2 path's
  bits;
- the gradient sum of squares and the column sums give the same bits on
  every level.

The whole module is skipped when the extension is not built.
"""

from __future__ import annotations

import numpy as np
import pytest

cllm_c = pytest.importorskip("cllm_c", reason="the C extension is not built")

import cllm_numpy as ref  # noqa: E402
from cllm_c import _lib  # noqa: E402

from tests import c_backend_helpers  # noqa: E402
from tests.c_backend_helpers import F32, _normal  # noqa: E402

# pytest finds a test's fixtures among its module's names
rng = c_backend_helpers.rng
threads = c_backend_helpers.threads


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
