"""The compiled extension, its status codes and the helpers every wrapper uses.

C reports failures as status codes; :func:`check` turns them into the spec's
typed errors. The wrappers validate every input with the spec's checks first,
so a status other than CLLM_OK from a kernel means C caught something the
wrapper should have (it re-checks sizes and ids on its own).
"""

from __future__ import annotations

import math
import os
import sys
import threading
from typing import Any

import numpy as np

from cllm_spec.errors import (
    BackendError,
    CllmError,
    ConfigError,
    DTypeError,
    IdRangeError,
    QueueClosedError,
    QueueTimeoutError,
    ReadOnlyError,
    RefCountError,
    ShapeError,
)

try:
    from cllm_c._ffi import ffi, lib
except ImportError as exc:  # not built: say how, instead of a bare import error
    raise BackendError(
        "the C extension cllm_c._ffi is not built (no working C compiler when "
        f"cllm was installed?): {exc}",
        hint="install a C compiler (e.g. apt-get install gcc) and reinstall cllm "
        "(pip install --force-reinstall --no-deps ., or pip install -e . in a "
        "clone); the numpy backend works without it",
    ) from exc

F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
SIMD_NAMES = {lib.CLLM_SIMD_SCALAR: "scalar", lib.CLLM_SIMD_AVX2: "avx2+fma"}
SIMD_NAMES[lib.CLLM_SIMD_AVX512] = "avx512"

_ERRORS: dict[int, type[Exception]] = {
    lib.CLLM_ERR_ARG: ShapeError,
    lib.CLLM_ERR_ID_RANGE: IdRangeError,
    lib.CLLM_ERR_TIMEOUT: QueueTimeoutError,
    lib.CLLM_ERR_CLOSED: QueueClosedError,
    lib.CLLM_ERR_REFCOUNT: RefCountError,
}


def _init() -> None:
    if lib.cllm_init() != lib.CLLM_OK:
        raise ConfigError(
            f"CLLM_NUM_THREADS={os.environ.get('CLLM_NUM_THREADS')!r}: expected an "
            "int in [1, 1024]"
        )


_init()


def check(status: int, what: str) -> None:
    """Raise the typed error for a C status (CLLM_OK returns)."""
    if status == lib.CLLM_OK:
        return
    message = f"{what}: {ffi.string(lib.cllm_strerror(status)).decode()}"
    if status == lib.CLLM_ERR_NOMEM:
        raise MemoryError(message)
    error = _ERRORS.get(status)
    if error is None:
        raise CllmError(message)
    raise error(message)


def arr(
    name: str,
    x: np.ndarray,
    dtype: np.dtype | None = None,
    shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """``x`` (float32 or float64) as a C-contiguous array.

    Strided inputs are copied once; contiguous ones pass through. ``dtype`` and
    ``shape`` re-check what C will assume about an array the spec's validators
    do not cover (the parts of a cache other than the one they compare with):
    C is handed sizes, so a mismatch must stop here, not read out of bounds.
    """
    if not isinstance(x, np.ndarray) or x.dtype not in (F32, F64):
        raise DTypeError(f"{name}: expected a float32 or float64 array")
    if dtype is not None and x.dtype != dtype:
        raise DTypeError(f"{name}: expected {dtype}, got {x.dtype}")
    if shape is not None and x.shape != shape:
        raise ShapeError(f"{name}: expected shape {shape}, got {x.shape}")
    # not np.ascontiguousarray: it turns a 0-d array into shape (1,)
    return x if x.flags.c_contiguous else x.copy(order="C")


def ptr(x: np.ndarray | None) -> Any:
    """A ``float *`` or ``double *`` into ``x``'s buffer (its dtype); NULL for None."""
    if x is None:
        return ffi.NULL
    return ffi.from_buffer("double[]" if x.dtype == F64 else "float[]", x)


def out_ptr(name: str, x: np.ndarray) -> Any:
    """Like :func:`ptr`, for an array that C writes into: it must be writeable.

    ``ffi.from_buffer`` hands out a writable pointer even into read-only memory
    (a ``bytes`` object's), so this check is what stops C from writing there.
    The KV cache buffers are the only caller-owned arrays C writes; every other
    output comes from :func:`empty` and is the wrapper's own.
    """
    if not x.flags.writeable:
        raise ReadOnlyError(f"{name}: the array is read-only and is written in place")
    return ffi.from_buffer("double[]" if x.dtype == F64 else "float[]", x)


#: Outputs at least this large come from cllm_big_alloc (huge pages).
BIG_BYTES = 8 << 20
#: Outputs from ALIGN_MIN_BYTES up start on a cache line.
ALIGN = 64
#: Outputs under this size are NumPy's own (16-byte aligned): finding the
#: 64-byte boundary costs a few microseconds, more than a split cache line
#: costs the kernels writing them, and one decoded token makes ~20 of them.
ALIGN_MIN_BYTES = 16 << 10
#: Outputs from this size up to BIG_BYTES are recycled by size (_Recycler).
RECYCLE_MIN_BYTES = 64 << 10
#: At most this many bytes of garbage outputs are kept for reuse.
RECYCLE_MAX_BYTES = 512 << 20


class _Recycler:
    """Output buffers kept by size, handed out again once nothing uses them.

    A training step allocates the same activations and gradients every step;
    from malloc each comes back as fresh pages (glibc maps and unmaps blocks
    this size), and faulting them in cost a third of a default-model step's
    time on this machine. Every array handed out is a view of a kept buffer,
    so the buffer's reference count says whether any output or view of it is
    still alive: only the stock list then refers to it.
    """

    def __init__(self, limit: int) -> None:
        self._stock: dict[int, list[tuple[np.ndarray, int]]] = {}
        self._bytes = 0
        self._limit = limit
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        """A (nbytes,) uint8 view, on a 64-byte boundary, of a buffer no live
        array uses."""
        with self._lock:
            stock = self._stock.setdefault(nbytes, [])
            for raw, skip in stock:
                # referenced by its tuple, this loop and the call's argument
                if sys.getrefcount(raw) == 3:
                    return raw[skip : skip + nbytes]
            raw, skip = _aligned_bytes(nbytes)
            if self._bytes + nbytes <= self._limit:
                stock.append((raw, skip))
                self._bytes += nbytes
            return raw[skip : skip + nbytes]


_recycler = _Recycler(RECYCLE_MAX_BYTES)


def _aligned_bytes(nbytes: int) -> tuple[np.ndarray, int]:
    """``(raw, skip)``: ``raw[skip : skip + nbytes]`` starts on a 64-byte
    boundary (``ffi.cast`` finds the address 3x faster than ``.ctypes.data``)."""
    raw = np.empty(nbytes + ALIGN, dtype=np.uint8)
    skip = -int(ffi.cast("uintptr_t", ffi.from_buffer(raw))) % ALIGN
    return raw, skip


def empty(shape: int | tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialized array, like ``np.empty``; from ALIGN_MIN_BYTES up it
    starts on a 64-byte boundary.

    Large ones are mapped by C on transparent huge pages (see ``cllm_big_alloc``
    in csrc/cpu.c): first touch then costs 1/512 of the page faults, which is a
    large share of a memory-bound kernel's time on a 134 MB optimizer state.
    The array keeps its mapping alive and unmaps it when collected. Mid-sized
    ones reuse the buffers of earlier outputs of the same size (_Recycler).
    """
    dt = np.dtype(dtype)
    # math.prod, not np.prod: that costs more than many kernel calls
    nbytes = (shape if isinstance(shape, int) else math.prod(shape)) * dt.itemsize
    if nbytes < ALIGN_MIN_BYTES:
        return np.empty(shape, dtype=dt)
    # 64-byte aligned like the big ones (NumPy aligns to 16): the GEMM's zmm
    # stores of C rows then never split a cache line
    if nbytes < RECYCLE_MIN_BYTES:
        raw, skip = _aligned_bytes(nbytes)
        return raw[skip : skip + nbytes].view(dt).reshape(shape)
    if nbytes < BIG_BYTES:
        return _recycler.take(nbytes).view(dt).reshape(shape)
    raw = lib.cllm_big_alloc(nbytes)
    if raw == ffi.NULL:
        raise MemoryError(f"cannot map {nbytes} bytes")
    owner = ffi.gc(raw, lib.cllm_big_free)
    return np.frombuffer(ffi.buffer(owner, nbytes), dtype=dt).reshape(shape)


def kernel(name: str, dtype: np.dtype) -> Any:
    """The C entry ``name`` for float32, ``name_f64`` for float64."""
    return getattr(lib, name if dtype == F32 else f"{name}_f64")


def scalar_out(dtype: np.dtype) -> Any:
    """A one-element C output of the dtype's C type."""
    return ffi.new("double *" if dtype == F64 else "float *")


def ids64(ids: np.ndarray) -> tuple[np.ndarray, Any]:
    """int32 or int64 ids as a contiguous int64 array and its ``int64_t *``."""
    i64 = np.ascontiguousarray(ids, dtype=np.int64)
    return i64, ffi.from_buffer("int64_t[]", i64)


def simd_level() -> str:
    """The SIMD path the kernels use now."""
    return SIMD_NAMES[lib.cllm_simd_level()]


def simd_detected() -> str:
    """The best SIMD path this CPU supports."""
    return SIMD_NAMES[lib.cllm_simd_detected()]


def set_simd(level: str) -> str:
    """Use at most ``level`` (scalar, avx2+fma, avx512); returns the level in use."""
    codes = {v: k for k, v in SIMD_NAMES.items()}
    if level not in codes:
        raise ConfigError(f"simd level: expected one of {list(codes)}, got {level!r}")
    return SIMD_NAMES[lib.cllm_set_simd_level(codes[level])]


def num_threads() -> int:
    return int(lib.cllm_num_threads())


def set_num_threads(n: int) -> None:
    """Threads for every later kernel call; results do not depend on it."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1024:
        raise ConfigError(f"threads: expected an int in [1, 1024], got {n!r}")
    check(lib.cllm_set_num_threads(n), "set_num_threads")
