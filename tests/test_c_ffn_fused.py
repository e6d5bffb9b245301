"""The C backend's feed-forward block with its activation fused into the GEMM.

``ffn_forward`` applies the activation to each tile of ``h`` as the GEMM
finishes it, and ``ffn_backward`` the activation's backward to each tile of
the projection's input gradient (csrc/gemm.c ``cllm_sgemm_act``, csrc/ffn.c
``cllm_act_tile``). Both are claimed to give the bits of the separate calls
(linear, then activation); these tests hold them to it, on shapes with edge
tiles (rows not a multiple of 12, columns not of 32), with the inner dimension
past one K slice of the GEMM (the epilogue must wait for the last), on the
few-row path that does not use the GEMM, at every SIMD level and 1 and 2
threads. The conformance suite checks the values against the reference.
"""

from __future__ import annotations

import numpy as np
import pytest

cllm_c = pytest.importorskip("cllm_c", reason="the C extension is not built")

from cllm_c import _lib  # noqa: E402

from cllm_spec.protocols import ActivationCache, LinearCache  # noqa: E402

F32 = np.float32
#: (N, C, F): edge tiles; C = 400 spans two K slices of 384 (the forward's
#: first product and the backward's projection both have K = C); N <= 16
#: takes the matrix-vector path
SHAPES = ((37, 24, 50), (96, 400, 64), (130, 128, 512), (5, 16, 40), (1, 8, 8))
KINDS = ("relu", "gelu", "gelu_tanh")


def _block(rng: np.random.Generator, n: int, c: int, f: int) -> tuple[np.ndarray, ...]:
    # a wide spread of pre-activations: both signs, GELU's tails and past its
    # saturation at |h| = 100
    x = (4.0 * rng.standard_normal((n, c))).astype(F32)
    w_fc = (rng.standard_normal((f, c)) * 8.0 / np.sqrt(c)).astype(F32)
    b_fc = rng.standard_normal(f).astype(F32)
    w_proj = (rng.standard_normal((c, f)) / np.sqrt(f)).astype(F32)
    b_proj = rng.standard_normal(c).astype(F32)
    dy = rng.standard_normal((n, c)).astype(F32)
    return x, w_fc, b_fc, w_proj, b_proj, dy


def _same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, what
    assert got.tobytes() == want.tobytes(), (
        f"{what}: not the bits of the separate calls"
    )


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", KINDS)
def test_the_fused_block_has_the_bits_of_its_separate_kernels(shape, kind, simd_levels):
    n, c, f = shape
    x, w_fc, b_fc, w_proj, b_proj, dy = _block(
        np.random.default_rng(n + c + f), n, c, f
    )
    for level in simd_levels:
        _lib.set_simd(level)
        for threads in (1, 2):
            cllm_c.set_num_threads(threads)
            at = f"{level}, {threads} thread(s)"
            h, _ = cllm_c.linear_forward(x, w_fc, b_fc)
            a, _ = cllm_c.activation_forward(h, kind)
            y, _ = cllm_c.linear_forward(a, w_proj, b_proj)
            da, dw_proj, db_proj = cllm_c.linear_backward(
                dy, LinearCache(a, w_proj, True)
            )
            dh = cllm_c.activation_backward(da, ActivationCache(h, kind))
            dx, dw_fc, db_fc = cllm_c.linear_backward(dh, LinearCache(x, w_fc, True))

            y2, cache = cllm_c.ffn_forward(
                x, w_fc, b_fc, w_proj, b_proj, activation=kind
            )
            _same(cache.act.x, h, f"h ({at})")
            _same(cache.proj.x, a, f"act(h) ({at})")
            _same(y2, y, f"y ({at})")
            got = cllm_c.ffn_backward(dy, cache)
            for name, g, want in zip(
                ("dx", "dw_fc", "db_fc", "dw_proj", "db_proj"),
                got,
                (dx, dw_fc, db_fc, dw_proj, db_proj),
                strict=True,
            ):
                _same(g, want, f"{name} ({at})")


def test_the_fused_backward_keeps_nan_and_the_relu_kink(simd_levels):
    """ReLU passes a NaN input's gradient and zeroes h <= 0 (h = 0 included);
    the fused tile must do what activation_backward does there too."""
    n, c, f = 24, 16, 32
    x, w_fc, b_fc, w_proj, b_proj, dy = _block(np.random.default_rng(5), n, c, f)
    _, cache = cllm_c.ffn_forward(x, w_fc, b_fc, w_proj, b_proj, activation="relu")
    h = np.array(cache.act.x)
    h[0, :4] = (np.nan, 0.0, -0.0, np.inf)
    act = ActivationCache(h, "relu")
    fc, proj = cache.fc, cache.proj
    for level in simd_levels:
        _lib.set_simd(level)
        da, _, _ = cllm_c.linear_backward(dy, proj)
        want = cllm_c.activation_backward(da, act)
        got = cllm_c.ffn_backward(dy, cache._replace(act=act))[0]
        _same(got, cllm_c.linear_backward(want, fc)[0], f"dx ({level})")
