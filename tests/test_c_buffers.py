"""The C backend's output buffers.

They start on a cache line, a recycled one comes back only when no view of
it is left, and a training step's big buffers are mapped once and then
served from the cache of mappings.

The whole module is skipped when the extension is not built.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cllm_c", reason="the C extension is not built")

from cllm_c import _lib  # noqa: E402

from tests.c_backend_helpers import F32  # noqa: E402


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
