"""The C backend's column sums (csrc/ffn.c: bias and layer-norm gradients)
give a column the same bits however the columns are cut.

On one thread, the whole matrix is summed row by row in runs of up to 2048
columns. With work for two threads (cllm_threads_for), the columns are cut
into chunks of 64 that the threads claim, summed at AVX-512 in registers:
wide matrices (300 rows of 2600 here) and narrow ones (700 rows of 200). All
claim each column's sum is the same chain of double additions, rows in
order. These tests hold them to it, bit for bit: a linear layer's bias
gradient, on 1 and 2 threads, against the same columns as two layers (1300 +
1300 and 2048 + 552; 100 + 100 and 64 + 136), each summed on one thread, at
every SIMD level. The conformance suite checks the values.
"""

from __future__ import annotations

import numpy as np
import pytest

cllm_c = pytest.importorskip("cllm_c", reason="the C extension is not built")

from cllm_c import _lib  # noqa: E402

from cllm_spec.protocols import LinearCache  # noqa: E402

F32 = np.float32


def _bias_grad(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    w = np.zeros((dy.shape[1], x.shape[1]), F32)
    _, _, db = cllm_c.linear_backward(dy, LinearCache(x, w, True))
    assert db is not None
    return db


# (rows, columns, the two ways of cutting the columns into two layers)
SHAPES = [
    (1, 2600, (((0, 1300), (1300, 2600)), ((0, 2048), (2048, 2600)))),
    (300, 2600, (((0, 1300), (1300, 2600)), ((0, 2048), (2048, 2600)))),
    (700, 200, (((0, 100), (100, 200)), ((0, 64), (64, 200)))),
]


@pytest.mark.parametrize(("rows", "cols", "cuts"), SHAPES)
def test_a_bias_gradient_has_the_same_bits_in_chunks_and_in_runs(
    rows, cols, cuts, simd_levels
):
    rng = np.random.default_rng(rows)
    dy = rng.standard_normal((rows, cols)).astype(F32)
    x = rng.standard_normal((rows, 3)).astype(F32)
    for level in simd_levels:
        _lib.set_simd(level)
        cllm_c.set_num_threads(1)
        runs = [
            np.concatenate(
                [_bias_grad(np.ascontiguousarray(dy[:, a:b]), x) for a, b in cut]
            )
            for cut in cuts
        ]
        assert runs[0].tobytes() == runs[1].tobytes(), f"{level}: runs cut differently"
        for threads in (1, 2):
            cllm_c.set_num_threads(threads)
            whole = _bias_grad(dy, x)
            assert whole.tobytes() == runs[0].tobytes(), (
                f"{level}, {threads} threads: {cols} columns differ from their runs"
            )
