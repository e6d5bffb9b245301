"""The C backend's column sums (csrc/ffn.c: bias and layer-norm gradients)
give a column the same bits however the columns are cut.

Up to 2048 columns, one thread sums the whole matrix row by row (one run).
Wider matrices with work for two threads (300 rows of 2600 here) are cut into
chunks of 64 columns that the threads claim, summed at AVX-512 in registers;
with work for one (a single row), into runs of 2048 columns. All claim each
column's sum is the same chain of double additions, rows in order. These
tests hold them to it, bit for bit: a linear layer's bias gradient over 2600
outputs, on 1 and 2 threads, against the same columns as two layers of 1300
and of 2048 + 552 (one run each), at every SIMD level. The conformance suite
checks the values.
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


@pytest.mark.parametrize("rows", [1, 300])
def test_a_bias_gradient_has_the_same_bits_in_chunks_and_in_runs(rows, simd_levels):
    rng = np.random.default_rng(rows)
    dy = rng.standard_normal((rows, 2600)).astype(F32)
    x = rng.standard_normal((rows, 3)).astype(F32)
    for level in simd_levels:
        _lib.set_simd(level)
        runs = [
            np.concatenate(
                [_bias_grad(np.ascontiguousarray(dy[:, a:b]), x) for a, b in cuts]
            )
            for cuts in (((0, 1300), (1300, 2600)), ((0, 2048), (2048, 2600)))
        ]
        assert runs[0].tobytes() == runs[1].tobytes(), f"{level}: runs cut differently"
        for threads in (1, 2):
            cllm_c.set_num_threads(threads)
            whole = _bias_grad(dy, x)
            assert whole.tobytes() == runs[0].tobytes(), (
                f"{level}, {threads} threads: 2600 columns differ from their runs"
            )
