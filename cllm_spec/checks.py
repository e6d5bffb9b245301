"""Input validators shared by the reference backend and every backend wrapper.

Each check raises the spec's typed error with a message that names the argument,
what was expected and what was given. Nothing here casts, broadcasts or copies:
the spec is strict, so a backend that validates with these functions rejects
exactly what the reference rejects.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from cllm_spec.errors import (
    ConfigError,
    DTypeError,
    EmptyInputError,
    IdRangeError,
    NonFiniteError,
    ReadOnlyError,
    ShapeError,
)
from cllm_spec.protocols import (
    ActivationCache,
    AttentionCache,
    CrossEntropyCache,
    EmbeddingCache,
    FFNCache,
    KVCache,
    LayerNormCache,
    LinearCache,
    LogSoftmaxCache,
    MHACache,
    RegressionLossCache,
    SoftmaxCache,
)

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
INT_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))


def as_array(name: str, x: object) -> np.ndarray:
    """Return ``x`` if it is an ndarray; anything else is a DTypeError."""
    if not isinstance(x, np.ndarray):
        raise DTypeError(f"{name}: expected a numpy.ndarray, got {type(x).__name__}")
    return x


def expect_float(name: str, x: object) -> np.ndarray:
    """``x`` is a float32 or float64 ndarray."""
    arr = as_array(name, x)
    if arr.dtype not in FLOAT_DTYPES:
        raise DTypeError(f"{name}: expected float32 or float64, got {arr.dtype}")
    return arr


def expect_int(name: str, x: object) -> np.ndarray:
    """``x`` is an int32 or int64 ndarray (ids, targets)."""
    arr = as_array(name, x)
    if arr.dtype not in INT_DTYPES:
        raise DTypeError(f"{name}: expected int32 or int64 ids, got {arr.dtype}")
    return arr


def expect_bool(name: str, x: object) -> np.ndarray:
    """``x`` is a bool ndarray (masks)."""
    arr = as_array(name, x)
    if arr.dtype != np.bool_:
        raise DTypeError(f"{name}: expected a bool mask, got {arr.dtype}")
    return arr


def expect_same_dtype(names: Sequence[str], arrays: Sequence[np.ndarray]) -> np.dtype:
    """All float arrays share one dtype (no silent promotion)."""
    for name, a in zip(names, arrays, strict=False):
        as_array(name, a)
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) != 1:
        given = ", ".join(f"{n}={a.dtype}" for n, a in zip(names, arrays, strict=True))
        raise DTypeError(f"arguments must share one float dtype, got {given}")
    return arrays[0].dtype


def expect_rank(name: str, x: np.ndarray, rank: int | tuple[int, ...]) -> None:
    """``x.ndim`` is ``rank`` (or one of the ranks given)."""
    ranks = (rank,) if isinstance(rank, int) else rank
    if as_array(name, x).ndim not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise ShapeError(f"{name}: expected rank {want}, got shape {x.shape}")


def expect_min_rank(name: str, x: np.ndarray, rank: int) -> None:
    """``x.ndim >= rank``."""
    if as_array(name, x).ndim < rank:
        raise ShapeError(f"{name}: expected rank >= {rank}, got shape {x.shape}")


def expect_shape(name: str, x: np.ndarray, shape: tuple[int | None, ...]) -> None:
    """``x.shape`` equals ``shape``; ``None`` entries match any size."""
    x = as_array(name, x)
    ok = x.ndim == len(shape) and all(
        want is None or want == got for want, got in zip(shape, x.shape, strict=False)
    )
    if not ok:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ShapeError(f"{name}: expected shape {want}, got {x.shape}")


def expect_nonempty(name: str, x: np.ndarray) -> None:
    """``x`` has at least one element."""
    if as_array(name, x).size == 0:
        raise EmptyInputError(f"{name}: expected at least one element, got {x.shape}")


#: A backend's optional ``all_finite`` (see :func:`expect_finite`), or None.
FiniteScan = Callable[[np.ndarray], bool] | None


def expect_finite(name: str, x: np.ndarray, scan: FiniteScan = None) -> None:
    """Every element of ``x`` is finite (ints and bools always are).

    ``scan`` is a backend's optional ``all_finite(x) -> bool`` (float32 and
    float64 arrays, exact: True iff no element is NaN or +-inf), which callers
    holding a backend pass for the large arrays of every step: parameters,
    gradients and optimizer state. It only decides faster that ``x`` passes;
    a False is confirmed, and counted for the message, by NumPy below.
    """
    x = as_array(name, x)
    if x.dtype.kind in "biu":
        return
    if x.dtype.kind not in "fc":
        raise DTypeError(f"{name}: expected numbers, got {x.dtype}")
    if scan is not None and x.dtype in (np.float32, np.float64) and scan(x):
        return
    # One NaN or inf makes the sum non-finite, so a finite sum proves the array
    # finite without the full elementwise scan (a large win on 33M-parameter
    # optimizer buffers); only a non-finite sum, which overflow can also cause,
    # needs the exact check.
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.sum(x)):
            return
    if not np.all(np.isfinite(x)):
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise NonFiniteError(f"{name}: {bad} non-finite value(s) (NaN or inf)")


def expect_ids(
    name: str, ids: np.ndarray, vocab_size: int, *, ignore_index: int | None = None
) -> None:
    """Every id lies in [0, vocab_size), except ids equal to ``ignore_index``."""
    ids = as_array(name, ids)
    if ids.dtype.kind not in "iu":
        raise DTypeError(f"{name}: expected integer ids, got {ids.dtype}")
    if ids.size == 0:
        return
    valid = ids if ignore_index is None else ids[ids != ignore_index]
    if valid.size and (valid.min() < 0 or valid.max() >= vocab_size):
        bad = valid[(valid < 0) | (valid >= vocab_size)]
        raise IdRangeError(
            f"{name}: ids must lie in [0, {vocab_size}), found {int(bad[0])} "
            f"({bad.size} out of range)"
        )


def expect_contiguous(name: str, x: np.ndarray) -> None:
    """``x`` is C-contiguous (backends that hand pointers to C need this)."""
    if not as_array(name, x).flags.c_contiguous:
        raise ShapeError(
            f"{name}: expected a C-contiguous array",
            hint="pass np.ascontiguousarray(x)",
        )


def expect_writeable(name: str, x: np.ndarray) -> None:
    """``x`` may be written in place (functions that write into a buffer need this).

    A read-only array (a view of a ``bytes`` object, a read-only memory map, an
    array whose ``flags.writeable`` was cleared) is refused before anything is
    written, by every backend alike: NumPy would refuse the write itself, but C
    would not notice it.
    """
    if not as_array(name, x).flags.writeable:
        raise ReadOnlyError(f"{name}: the array is read-only and is written in place")


def expect_int_scalar(name: str, value: object) -> int:
    """``value`` is a Python or NumPy int (bools are not ints here)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(f"{name}: expected an int, got {type(value).__name__}")
    return int(value)


def expect_int_at_least(name: str, value: object, minimum: int) -> int:
    """``value`` is an int (not a bool) >= ``minimum``."""
    value = expect_int_scalar(name, value)
    if value < minimum:
        raise ConfigError(f"{name}: expected >= {minimum}, got {value}")
    return int(value)


def expect_positive_int(name: str, value: object) -> int:
    """``value`` is an int >= 1 (sizes, counts, capacities)."""
    return expect_int_at_least(name, value, 1)


def expect_nonnegative_int(name: str, value: object) -> int:
    """``value`` is an int >= 0 (seeds, offsets, step counters)."""
    return expect_int_at_least(name, value, 0)


def expect_flag(name: str, value: object) -> bool:
    """``value`` is a bool (Python or NumPy); ints are not accepted as flags."""
    if not isinstance(value, bool | np.bool_):
        raise ConfigError(f"{name}: expected a bool, got {type(value).__name__}")
    return bool(value)


def expect_in_range(
    name: str,
    value: object,
    lo: float,
    hi: float,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """``value`` is a finite real in [lo, hi] (open ends where asked)."""
    if isinstance(value, bool) or not isinstance(
        value, int | float | np.integer | np.floating
    ):
        raise ConfigError(f"{name}: expected a number, got {type(value).__name__}")
    try:
        v = float(value)
    except OverflowError:  # an int beyond the float range
        v = math.inf if int(value) > 0 else -math.inf
    too_low = v <= lo if lo_open else v < lo
    too_high = v >= hi if hi_open else v > hi
    if not np.isfinite(v) or too_low or too_high:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise ConfigError(
            f"{name}: expected a value in {left}{lo}, {hi}{right}, got {v}"
        )
    return v


def expect_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """``value`` is one of ``choices`` (strings; nothing else is compared)."""
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{name}: expected one of {list(choices)}, got {value!r}")
    return str(value)


# ------------------------------------------------------------------ caches ----
#: What each field of each cache holds: "float" / "int" (an ndarray of the spec's
#: float / int dtypes), "real" (a finite number), "count" (an int >= 0), "flag",
#: "str", or a cache class (checked the same way, recursively). Shapes are the
#: component's business; this table makes sure they can be asked at all.
CACHE_FIELDS: dict[type, dict[str, Any]] = {
    SoftmaxCache: {"y": "float"},
    LogSoftmaxCache: {"y": "float"},
    CrossEntropyCache: {
        "probs": "float",
        "targets": "int",
        "weight": "float",
        "label_smoothing": "real",
        "reduction": "str",
    },
    RegressionLossCache: {"diff": "float", "reduction": "str", "delta": "real"},
    AttentionCache: {
        "q": "float",
        "k": "float",
        "v": "float",
        "att": "float",
        "scale": "real",
    },  # fmt: skip
    KVCache: {"k": "float", "v": "float", "length": "count"},
    LinearCache: {"x": "float", "w": "float", "has_bias": "flag"},
    MHACache: {
        "qkv": LinearCache,
        "attn": AttentionCache,
        "proj": LinearCache,
        "n_head": "count",
    },  # fmt: skip
    ActivationCache: {"x": "float", "kind": "str"},
    LayerNormCache: {"x_hat": "float", "rstd": "float", "weight": "float"},
    FFNCache: {"fc": LinearCache, "act": ActivationCache, "proj": LinearCache},
    EmbeddingCache: {
        "ids": "int",
        "vocab_size": "count",
        "n_positions": "count",
        "pos_offset": "count",
    },  # fmt: skip
}

CacheT = TypeVar("CacheT")


def _expect_field(name: str, value: object, kind: Any) -> None:
    if isinstance(kind, type):
        expect_cache(value, kind, name)
    elif kind == "float":
        expect_float(name, value)
    elif kind == "int":
        expect_int(name, value)
    elif kind == "count":
        expect_nonnegative_int(name, value)
    elif kind == "real":
        expect_in_range(name, value, -np.inf, np.inf)
    elif kind == "flag":
        expect_flag(name, value)
    elif not isinstance(value, str):
        raise DTypeError(f"{name}: expected a str, got {type(value).__name__}")


def expect_cache(cache: object, cls: type[CacheT], name: str = "cache") -> CacheT:
    """``cache`` is a ``cls`` (the NamedTuple a forward returned) whose fields,
    nested caches included, have the types and dtypes of :data:`CACHE_FIELDS`.

    A backward function calls this first, so a wrong object, a hand-made tuple or
    a field of the wrong kind is a typed error and never an AttributeError,
    TypeError or IndexError from deep inside the computation.
    """
    if not isinstance(cache, cls):
        raise DTypeError(
            f"{name}: expected {cls.__name__}, got {type(cache).__name__}",
            hint="pass the cache returned by the matching forward function",
        )
    for field, kind in CACHE_FIELDS[cls].items():
        _expect_field(f"{name}.{field}", getattr(cache, field), kind)
    return cache
