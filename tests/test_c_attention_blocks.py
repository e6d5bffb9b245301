"""The C backend's AVX-512 attention blocks (csrc/attention_blocks.c).

Where T and HS are multiples of 16, a causal attention pair's products run
in 8-row blocks instead of the GEMM's 12 x 32 tiles, with their own causal
cuts (which rows need which keys) and the 1/sqrt(HS) of dq and dk applied as
they are stored. They are claimed to give the GEMM's bits; these tests hold
them to it, with ``cllm_attention_blocks(0)`` sending every pair through the
GEMM: the model's attention over the token layout forward and backward, and
a causal attention with fewer queries than keys, at 1 and 2 threads. The hook
also counts the calls that ran with the blocks, so a shape that should take
them and does not (the two paths would then agree trivially) fails too. The
conformance suite (test_attention_training_shapes.py) checks the values
against the reference.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

cllm_c = pytest.importorskip("cllm_c", reason="the C extension is not built")

from cllm_c import _lib  # noqa: E402

F32 = np.float32
#: (B, T, C, NH): HS 16 to 64, T ending on a whole and a half block of 8
#: rows; T = 40 is no multiple of 16 and T = 400 is past one K slice of the
#: GEMM (KC_DEFAULT), so those stay on the GEMM (controls)
MHA_SHAPES = (
    (2, 16, 32, 2),
    (3, 64, 128, 4),
    (2, 80, 96, 2),
    (1, 128, 128, 2),
    (2, 40, 64, 2),
    (1, 400, 32, 2),
)
#: the GEMM's K slice (gemm.c KC_MAX): a longer K sums each slice from 0 and
#: adds it to C, which the blocks' single chain would not match
KC_DEFAULT = 384
#: (Tq, Tk, HS): causal with the queries at the end of the keys
#: (23, 32): the first block's last row sees 17 keys, one past a vector
CAUSAL_SHAPES = (
    (1, 16, 16),
    (5, 32, 16),
    (23, 32, 16),
    (24, 64, 32),
    (40, 96, 64),
    (64, 64, 48),
)


@pytest.fixture
def avx512() -> Iterator[None]:
    """AVX-512 on (the blocks' level) and the blocks on again afterwards."""
    saved = _lib.simd_level()
    if _lib.set_simd("avx512") != "avx512":
        pytest.skip("this CPU has no AVX-512")
    yield
    _lib.lib.cllm_attention_blocks(1)
    _lib.set_simd(saved)
    cllm_c.set_num_threads(1)


def _both(run, calls: int) -> tuple[list[np.ndarray], list[np.ndarray]]:  # type: ignore[no-untyped-def]
    """run()'s arrays through the blocks, then through the GEMM; ``calls`` is
    how many of run()'s kernel calls must have run with the blocks (0 where
    the shapes do not fit them), and none may with the blocks off."""
    _lib.lib.cllm_attention_blocks(1)
    blocks = [np.array(a) for a in run()]
    assert _lib.lib.cllm_attention_blocks(0) == calls, "the blocks were not used"
    gemm = [np.array(a) for a in run()]
    assert _lib.lib.cllm_attention_blocks(1) == 0, "blocks off, yet used"
    return blocks, gemm


def _same(
    got: list[np.ndarray], want: list[np.ndarray], names: tuple[str, ...]
) -> None:
    for name, g, w in zip(names, got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        assert g.tobytes() == w.tobytes(), f"{name}: not the GEMM's bits"


def _mha_case(
    rng: np.random.Generator, b: int, t: int, c: int
) -> tuple[np.ndarray, ...]:
    x = rng.standard_normal((b, t, c)).astype(F32)
    w_qkv = (rng.standard_normal((3 * c, c)) * 2.0 / np.sqrt(c)).astype(F32)
    b_qkv = (0.1 * rng.standard_normal(3 * c)).astype(F32)
    w_proj = (rng.standard_normal((c, c)) / np.sqrt(c)).astype(F32)
    b_proj = (0.1 * rng.standard_normal(c)).astype(F32)
    dy = rng.standard_normal((b, t, c)).astype(F32)
    return x, w_qkv, b_qkv, w_proj, b_proj, dy


@pytest.mark.parametrize(
    "shape", MHA_SHAPES, ids=lambda s: "b{}-t{}-c{}-nh{}".format(*s)
)
@pytest.mark.parametrize("threads", (1, 2))
def test_mha_through_the_blocks_has_the_gemms_bits(shape, threads, avx512):
    b, t, c, nh = shape
    x, w_qkv, b_qkv, w_proj, b_proj, dy = _mha_case(
        np.random.default_rng(t + c), b, t, c
    )
    cllm_c.set_num_threads(threads)

    def run() -> tuple[np.ndarray, ...]:
        y, cache, _ = cllm_c.mha_forward(x, w_qkv, b_qkv, w_proj, b_proj, n_head=nh)
        return (y, cache.attn.att, *cllm_c.mha_backward(dy, cache))

    fits = t % 16 == 0 and (c // nh) % 16 == 0 and t <= KC_DEFAULT
    blocks, gemm = _both(run, 2 if fits else 0)  # the forward and the backward
    _same(blocks, gemm, ("y", "att", "dx", "dw_qkv", "db_qkv", "dw_proj", "db_proj"))


@pytest.mark.parametrize(
    "shape", CAUSAL_SHAPES, ids=lambda s: "tq{}-tk{}-hs{}".format(*s)
)
def test_causal_attention_through_the_blocks_has_the_gemms_bits(shape, avx512):
    tq, tk, hs = shape
    rng = np.random.default_rng(tq * tk + hs)
    q = (2.0 * rng.standard_normal((2, 3, tq, hs))).astype(F32)
    k = (2.0 * rng.standard_normal((2, 3, tk, hs))).astype(F32)
    v = rng.standard_normal((2, 3, tk, hs)).astype(F32)

    def run() -> tuple[np.ndarray, ...]:
        out, cache = cllm_c.attention_forward(q, k, v, causal=True)
        return out, cache.att

    blocks, gemm = _both(run, 1)
    _same(blocks, gemm, ("out", "att"))


@pytest.mark.parametrize("bad", (np.inf, np.nan))
def test_a_non_finite_value_the_mask_hides_still_reaches_the_output(bad, avx512):
    """v's last row is seen only by the last query, but 0 * inf is NaN: every
    output of the pair must carry it, as the whole product does. The blocks
    skip the hidden keys, so a pair whose last output row shows a non-finite
    v must start again on the GEMM. The public functions refuse non-finite
    input, so this calls the kernel itself (a value can still overflow inside
    the model)."""
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((1, 2, 32, 16)).astype(F32) for _ in range(3))
    v[0, 1, -1, 5] = bad

    def run() -> tuple[np.ndarray, ...]:
        out, att = np.empty_like(q), np.empty((1, 2, 32, 32), dtype=F32)
        status = _lib.lib.cllm_attention_forward(
            _lib.ptr(q), _lib.ptr(k), _lib.ptr(v), _lib.ffi.NULL, 1, 2, 32, 32, 16, 32,
            1, 0.25, _lib.ptr(out), _lib.ptr(att),
        )  # fmt: skip
        assert status == 0
        return out, att

    blocks, gemm = _both(run, 1)  # the call runs with the blocks; the pair does not
    _same(blocks, gemm, ("out", "att"))
    column = blocks[0][0, 1, :, 5]
    assert np.isnan(column[:-1]).all(), "the NaN of 0 * inf went missing"
    assert not np.isfinite(column[-1]), "the query that sees the bad value"
    assert np.isfinite(blocks[0][0, 0]).all(), "another head saw the bad value"


#: (operand, row): a position the causal mask hides from some queries' or
#: keys' products, so skipping it loses the NaN of 0 * inf: the first query's
#: (dout, q) and the last key's (k, v)
BACKWARD_BAD = (("dout", 0), ("q", 0), ("k", -1), ("v", -1))


@pytest.mark.parametrize(("operand", "row"), BACKWARD_BAD)
@pytest.mark.parametrize("bad", (np.inf, np.nan))
def test_a_non_finite_backward_operand_gets_the_whole_products(
    operand, row, bad, avx512
):
    """The backward's blocks skip what the causal mask zeroes; with a
    non-finite operand the whole products have NaNs there. The pair's output
    rows that sum over every row of an operand show it, and the pair starts
    again on the GEMM: the bits of the blocks off. att comes from finite
    operands, so only the backward's own products can show the bad value."""
    rng = np.random.default_rng(11)
    b, nh, t, hs = 1, 2, 32, 16
    q, k, v, dout = (rng.standard_normal((b, nh, t, hs)).astype(F32) for _ in range(4))
    _, cache = cllm_c.attention_forward(q, k, v, causal=True)
    att = np.array(cache.att)
    dict(dout=dout, q=q, k=k, v=v)[operand][0, 1, row, 5] = bad
    lib, ffi = _lib.lib, _lib.ffi
    layout = ffi.new("cllm_layout[7]", [(nh * t * hs, t * hs, hs)] * 7)

    def run() -> tuple[np.ndarray, ...]:
        dq, dk, dv = (np.empty_like(q) for _ in range(3))
        status = lib.cllm_attention_backward_ex(
            _lib.ptr(dout), _lib.ptr(q), _lib.ptr(k), _lib.ptr(v), _lib.ptr(att),
            layout, b, nh, t, t, hs, 0.25, _lib.ptr(dq), _lib.ptr(dk), _lib.ptr(dv),
        )  # fmt: skip
        assert status == 0
        return dq, dk, dv

    blocks, gemm = _both(run, 1)
    _same(blocks, gemm, ("dq", "dk", "dv"))
    # the whole products spread the bad value past what the skipping ones reach
    hit = [np.count_nonzero(~np.isfinite(a[0, 1])) for a in blocks]
    assert max(hit) >= t, f"{operand}: the NaNs of the hidden products went missing"
    assert all(np.isfinite(a[0, 0]).all() for a in blocks), "another head saw it"


def test_a_shorter_gemm_k_slice_sends_attention_back_to_the_gemm(avx512):
    """The blocks give the GEMM's bits only where every product is one K
    slice; with KC 64 a T = 128 attention must take the GEMM (bits as the
    blocks off), and the blocks must come back with the default KC."""
    lib = _lib.lib
    x, w_qkv, b_qkv, w_proj, b_proj, dy = _mha_case(
        np.random.default_rng(5), 2, 128, 64
    )

    def run() -> tuple[np.ndarray, ...]:
        y, cache, _ = cllm_c.mha_forward(x, w_qkv, b_qkv, w_proj, b_proj, n_head=2)
        return (y, cache.attn.att, *cllm_c.mha_backward(dy, cache))

    assert lib.cllm_gemm_set_blocking(64, 240, 3072) == lib.CLLM_OK
    try:
        blocks, gemm = _both(run, 0)
    finally:
        assert lib.cllm_gemm_set_blocking(KC_DEFAULT, 240, 3072) == lib.CLLM_OK
    _same(blocks, gemm, ("y", "att", "dx", "dw_qkv", "db_qkv", "dw_proj", "db_proj"))
    _both(run, 2)
