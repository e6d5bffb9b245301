"""The C backend's masked-softmax rows (csrc/attention.c, ``att_row_avx2``).

A causal row stops its vector loops at the first whole vector past its last
visible key, and on AVX-512 takes its exps 16 at a time. Both are claimed to
give the bits of the plain loop over the whole row; these tests hold them to
it. The conformance suite checks the values against the float64 reference,
which a skip that dropped a visible key or left a hidden one non-zero fails;
here the comparison is bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

cllm_c = pytest.importorskip("cllm_c", reason="the C extension is not built")

from cllm_c import _lib  # noqa: E402

F32 = np.float32
#: key counts around the 8- and 16-lane vectors and a tail past them
LENGTHS = (1, 7, 8, 9, 15, 16, 17, 24, 31, 33, 64, 70)


@pytest.fixture
def simd() -> Iterator[list[str]]:
    """The SIMD levels this CPU has (scalar excluded); restores the level."""
    saved = _lib.simd_level()
    levels = [v for v in ("avx2+fma", "avx512") if _lib.set_simd(v) == v]
    if not levels:
        pytest.skip("this CPU has no AVX2")
    yield levels
    _lib.set_simd(saved)


def _qkv(rng: np.random.Generator, tq: int, tk: int) -> tuple[np.ndarray, ...]:
    q = (3.0 * rng.standard_normal((2, 2, tq, 8))).astype(F32)
    k = (3.0 * rng.standard_normal((2, 2, tk, 8))).astype(F32)
    v = rng.standard_normal((2, 2, tk, 8)).astype(F32)
    return q, k, v


@pytest.mark.parametrize("tk", LENGTHS)
def test_a_causal_row_is_the_bits_of_the_whole_row_with_its_keys_masked(tk, simd):
    """Row i of a causal forward (keys past i skipped) against the same query
    alone, attending to all tk keys with those past i hidden by the padding
    mask, which runs every loop over the whole row."""
    rng = np.random.default_rng(tk)
    q, k, v = _qkv(rng, tk, tk)
    for level in simd:
        _lib.set_simd(level)
        out, cache = cllm_c.attention_forward(q, k, v, causal=True)
        for i in range(tk):
            mask = np.zeros((2, tk), dtype=bool)
            mask[:, : i + 1] = True
            one, one_cache = cllm_c.attention_forward(
                q[:, :, i : i + 1], k, v, causal=False, key_padding_mask=mask
            )
            assert (
                np.asarray(cache.att)[:, :, i].tobytes()
                == np.asarray(one_cache.att)[:, :, 0].tobytes()
            ), (level, tk, i)
            assert out[:, :, i].tobytes() == one[:, :, 0].tobytes(), (level, tk, i)


@pytest.mark.parametrize("tk", LENGTHS)
def test_avx512_attention_rows_are_the_avx2_bits(tk, simd):
    """Causal (queries at the end of the keys, as with a cache), full and
    padded rows: the 16-lane exps give the 8-lane bits."""
    if "avx512" not in simd:
        pytest.skip("this CPU has no AVX-512")
    rng = np.random.default_rng(100 + tk)
    tq = max(1, tk // 2)
    q, k, v = _qkv(rng, tq, tk)
    mask = rng.random((2, tk)) < 0.7
    mask[:, 0] = True
    got = {}
    for level in ("avx2+fma", "avx512"):
        _lib.set_simd(level)
        results = [
            cllm_c.attention_forward(q, k, v, causal=True),
            cllm_c.attention_forward(q, k, v, causal=False),
            cllm_c.attention_forward(q, k, v, causal=False, key_padding_mask=mask),
        ]
        got[level] = [
            a.tobytes() for out, cache in results for a in (out, np.asarray(cache.att))
        ]
    assert got["avx512"] == got["avx2+fma"], tk
