"""The C backend's matrix-vector path (csrc/gemv.c) gives a row the same bits
whatever the rows around it.

Linear of at most 16 rows runs on gemv.c. There, one or two x rows read the
weight one row at a time (a single forward stream for the hardware
prefetcher), and three or more read it in blocks of four rows. Both claim to
compute each y(m, j) as the same chain of fused multiply-adds, so a token's
logits do not depend on how many sequences decode beside it. These tests hold
them to it, bit for bit, at every SIMD level and on 1 and 2 threads, on shapes
with a K tail for every vector width (97), an output count that is neither a
multiple of the block (4) nor of a thread's chunk (64), and one whole weight
row per 16 lanes (384, the production width). The conformance suite checks
the values against the reference.
"""

from __future__ import annotations

import numpy as np
import pytest

cllm_c = pytest.importorskip("cllm_c", reason="the C extension is not built")

from cllm_c import _lib  # noqa: E402

F32 = np.float32
#: (OUT, IN): K tails of 1 (97 % 16, 97 % 8), none (384), and 7 of 8 (15)
SHAPES = ((3001, 97), (130, 384), (5, 15))
#: x row counts on each side of the switch (<= 2 alone, >= 3 in blocks), up to
#: the path's last (16)
ROWS = (1, 2, 3, 4, 5, 16)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_a_row_has_the_same_bits_alone_beside_one_or_in_a_block(
    shape, bias, simd_levels
):
    n_out, n_in = shape
    rng = np.random.default_rng(n_out + n_in)
    x = rng.standard_normal((16, n_in)).astype(F32)
    w = (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(F32)
    b = rng.standard_normal(n_out).astype(F32) if bias else None
    for level in simd_levels:
        _lib.set_simd(level)
        for threads in (1, 2):
            cllm_c.set_num_threads(threads)
            full, _ = cllm_c.linear_forward(x, w, b)  # 16 rows: blocks
            for m in ROWS:
                y, _ = cllm_c.linear_forward(x[:m], w, b)
                assert y.tobytes() == full[:m].tobytes(), (
                    f"{level}, {threads} threads: the first {m} rows differ from "
                    "the same rows computed among 16"
                )
            # the second row alone: a row's result does not depend on its index
            y, _ = cllm_c.linear_forward(x[1:2], w, b)
            assert y.tobytes() == full[1:2].tobytes(), f"{level}: row 1 alone"
