"""Gradient buffers: norms, clipping, statistics, accumulation, tree reduction.

All parameters of a model live in one flat buffer ``g: (P,) float32|float64``;
:class:`ParamLayout` names the pieces of it. Semantics follow PyTorch's
``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_`` applied to that buffer.
Gradient values may be non-finite: these functions propagate NaN and inf (so that
:func:`grad_stats` can report them) and only hyperparameters must be finite.
No function mutates its inputs; results are new arrays of the input dtype.

Global norm
-----------
``grad_global_norm(g, norm_type=2.0) -> float``::

    norm_type == 2:   ||g||_2   = sqrt(sum_i g_i^2)
    norm_type == inf: ||g||_inf = max_i |g_i|

Any other ``norm_type`` (strings such as ``"inf"`` included) is a ConfigError.
The L2 norm is computed stably: with
``a = max_i |g_i| = 2^k * f`` (f in [0.5, 1)), every element is scaled by ``2^-k``
(exact, a power of two) and the squares are summed in float64, so the result
neither overflows (float64 values near 1e200) nor underflows (values near 1e-200)
and a float32 buffer loses nothing before the summation. The result is a Python
float. NaN anywhere gives NaN; otherwise an infinite element gives inf.

Deviation from PyTorch: PyTorch accumulates a float32 norm in float32, so
``||[1e30] * 4||`` overflows to inf there (and clipping then zeroes the buffer);
here it is 2e30, and a norm beyond the float32 range (a buffer of values near
3e38) is still returned finite. Clipping is therefore meaningful for every
finite buffer. PyTorch also accepts p-norms other than 2 and inf, and strings.

Clipping
--------
``clip_grad_norm(g, max_norm, norm_type=2.0) -> (clipped, total_norm)``
(``max_norm`` finite, > 0)::

    total_norm = grad_global_norm(g, norm_type)         (returned: the pre-clip norm)
    coef       = min(max_norm / (total_norm + 1e-6), 1)
    clipped    = g * coef                               (coef rounded to g's dtype)

As in PyTorch (``error_if_nonfinite=False``), a non-finite total norm still
scales: NaN gives coef NaN and an all-NaN result; inf gives coef 0, so finite
elements become 0 and infinite ones NaN (0 * inf). The multiplication by a coef
of exactly 1 leaves every bit unchanged.

``clip_grad_value(g, clip_value) -> clip(g, -c, c)`` (``c`` finite, > 0); NaN stays
NaN and +-inf become +-c.

Statistics
----------
``grad_stats(g) -> GradStats(norm, min, max, mean, nonfinite)``: every statistic
is over all P elements, finite or not (NumPy/PyTorch reduction semantics: one NaN
makes norm, min, max and mean NaN), and ``nonfinite`` counts the NaN and +-inf
elements, so a caller sees both that something is wrong and how much. ``norm`` is
:func:`grad_global_norm` (L2); ``mean = sum_i g_i / P`` accumulated in float64.
All are Python floats (``nonfinite`` an int).

Arithmetic
----------
``grad_accumulate(acc, g) -> acc + g`` (same shape and dtype, a new array);
``grad_scale(g, factor) -> g * factor`` (``factor`` finite, rounded to g's dtype).

Tree reduction
--------------
``grad_tree_reduce(buffers) -> sum``: K >= 1 buffers of one shape (P,) and dtype,
summed by a fixed pairwise tree, level by level: level 0 is the list; each
level adds pairs (0, 1), (2, 3), ... and carries an odd last buffer unchanged to
the next level, until one buffer remains. For K = 5::

    ((b0 + b1) + (b2 + b3)) + b4

The order depends on K only, so the bits of the result never depend on which
worker finished first. K = 1 returns a copy.

Errors (checked before any computation)
---------------------------------------
- DTypeError: a buffer that is not a float32/float64 ndarray, buffers of
  different dtypes, ``buffers`` not a list or tuple;
- ShapeError: a buffer that is not rank 1, buffers of different lengths;
- EmptyInputError: a buffer with P = 0, an empty list of buffers;
- ConfigError: ``norm_type`` not 2 or inf; ``max_norm``, ``clip_value`` not finite
  and > 0; ``factor`` not finite.

Parameter layout
----------------
:class:`ParamLayout` maps names to shapes in order and packs them, without
padding, into one flat buffer: parameter ``k`` occupies
``[offsets[k], offsets[k] + numel(k))``. ``views(flat)`` returns one ndarray view
per name sharing ``flat``'s memory, so the whole model is one allocation and no
buffer can be sized for part of the model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from cllm_spec.checks import (
    expect_contiguous,
    expect_float,
    expect_in_range,
    expect_nonempty,
    expect_positive_int,
    expect_rank,
    expect_same_dtype,
    expect_shape,
)
from cllm_spec.errors import ConfigError, DTypeError, EmptyInputError

#: Added to the total norm before dividing, as in ``torch.nn.utils.clip_grad_norm_``.
CLIP_NORM_EPS = 1e-6


# ------------------------------------------------------------ validation ----
def validate_flat(name: str, g: object) -> np.ndarray:
    """``g: (P,)`` float32|float64 with P >= 1; values may be non-finite."""
    arr = expect_float(name, g)
    expect_rank(name, arr, 1)
    expect_nonempty(name, arr)
    return arr


def validate_same_flat(
    names: Sequence[str], arrays: Sequence[object]
) -> list[np.ndarray]:
    """Several flat buffers of one dtype and one length."""
    flats = [validate_flat(n, a) for n, a in zip(names, arrays, strict=True)]
    expect_same_dtype(names, flats)
    for n, a in zip(names[1:], flats[1:], strict=True):
        expect_shape(n, a, flats[0].shape)
    return flats


def validate_norm_type(norm_type: object) -> float:
    """2 (L2) or inf (max-abs); PyTorch's other p-norms are not part of the spec."""
    if isinstance(norm_type, int | float | np.integer | np.floating) and not isinstance(
        norm_type, bool
    ):
        value = float(norm_type)
        if value in (2.0, math.inf):
            return value
    raise ConfigError(f"norm_type: expected 2.0 or inf, got {norm_type!r}")


def validate_positive(name: str, value: object) -> float:
    """A finite hyperparameter > 0 (max_norm, clip_value)."""
    return expect_in_range(name, value, 0.0, math.inf, lo_open=True)


def validate_factor(factor: object) -> float:
    """A finite scale factor (any sign, zero included)."""
    return expect_in_range("factor", factor, -math.inf, math.inf)


def validate_buffers(buffers: object) -> list[np.ndarray]:
    """A non-empty list or tuple of flat buffers of one dtype and length."""
    if not isinstance(buffers, list | tuple):
        raise DTypeError(
            f"buffers: expected a list of arrays, got {type(buffers).__name__}"
        )
    if len(buffers) == 0:
        raise EmptyInputError("buffers: expected at least one buffer, got none")
    names = [f"buffers[{i}]" for i in range(len(buffers))]
    return validate_same_flat(names, buffers)


# --------------------------------------------------------- ParamLayout ----
Shape = tuple[int, ...]


def _as_shape(name: str, shape: object) -> Shape:
    dims = (shape,) if isinstance(shape, int | np.integer) else shape
    if not isinstance(dims, Sequence | np.ndarray) or isinstance(dims, str):
        raise ConfigError(f"{name}: expected a shape tuple, got {shape!r}")
    return tuple(expect_positive_int(f"{name} dimension", d) for d in dims)


class ParamLayout:
    """An ordered map name -> shape over one flat (P,) buffer.

        >>> layout = ParamLayout({"wte": (5, 2), "ln.weight": (2,)})
        >>> layout.size, layout.offsets
        (12, {'wte': 0, 'ln.weight': 10})
        >>> flat = layout.zeros(np.float32)
        >>> views = layout.views(flat)
        >>> views["ln.weight"][:] = 1.0        # writes into flat[10:12]
        >>> float(flat.sum())
        2.0

    Names are non-empty strings, unique; every dimension is an int >= 1 (a scalar
    parameter has shape ``()``); a layout holds at least one parameter.
    """

    def __init__(
        self, shapes: Mapping[str, object] | Iterable[tuple[str, object]]
    ) -> None:
        items = list(shapes.items() if isinstance(shapes, Mapping) else shapes)
        if not items:
            raise EmptyInputError("ParamLayout: expected at least one parameter")
        self._shapes: dict[str, Shape] = {}
        self._offsets: dict[str, int] = {}
        self._slices: dict[str, slice] = {}
        offset = 0
        for item in items:
            if not isinstance(item, tuple) or len(item) != 2:
                raise ConfigError(f"ParamLayout: expected (name, shape), got {item!r}")
            name, shape = item
            if not isinstance(name, str) or not name:
                raise ConfigError(f"ParamLayout: bad parameter name {name!r}")
            if name in self._shapes:
                raise ConfigError(f"ParamLayout: duplicate parameter name {name!r}")
            dims = _as_shape(name, shape)
            self._shapes[name] = dims
            self._offsets[name] = offset
            self._slices[name] = slice(offset, offset + math.prod(dims))
            offset += math.prod(dims)
        self._size = offset
        # (name, start, stop, shape) once: views() runs on every model forward
        self._spans = [
            (n, o, o + math.prod(d), d)
            for (n, d), o in zip(
                self._shapes.items(), self._offsets.values(), strict=True
            )
        ]

    @property
    def size(self) -> int:
        """P, the total number of elements."""
        return self._size

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._shapes)

    @property
    def shapes(self) -> dict[str, Shape]:
        return dict(self._shapes)

    @property
    def offsets(self) -> dict[str, int]:
        """Start of each parameter in the flat buffer."""
        return dict(self._offsets)

    def numel(self, name: str) -> int:
        return math.prod(self[name])

    def slice(self, name: str) -> slice:
        return self._slices[name]

    def __getitem__(self, name: str) -> Shape:
        return self._shapes[name]

    def __contains__(self, name: object) -> bool:
        return name in self._shapes

    def __iter__(self) -> Iterator[str]:
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ParamLayout):
            return NotImplemented
        return list(self._shapes.items()) == list(other._shapes.items())

    def __hash__(self) -> int:
        return hash(tuple(self._shapes.items()))

    def __repr__(self) -> str:
        body = ", ".join(f"{n!r}: {s}" for n, s in self._shapes.items())
        return f"ParamLayout({{{body}}})"

    def validate_flat(self, flat: object, name: str = "flat") -> np.ndarray:
        """``flat: (P,)`` float32|float64, C-contiguous; another length is a
        ShapeError."""
        arr = expect_float(name, flat)
        expect_shape(name, arr, (self._size,))
        expect_contiguous(name, arr)
        return arr

    def views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """One view per parameter, in layout order, sharing ``flat``'s memory."""
        arr = self.validate_flat(flat)
        # per parameter tensor, not element; a slice of a C-contiguous buffer
        # is contiguous, so reshape is a view
        return {n: arr[a:b].reshape(s) for n, a, b, s in self._spans}

    def zeros(self, dtype: Any = np.float32) -> np.ndarray:
        """A new zero (P,) buffer in ``dtype`` (float32 or float64)."""
        dt = np.dtype(dtype)
        return expect_float("dtype", np.zeros(self._size, dtype=dt))

    def flatten(
        self, arrays: Mapping[str, np.ndarray], dtype: Any = None
    ) -> np.ndarray:
        """Pack ``arrays`` (exactly the layout's names and shapes) into a new buffer.

        ``dtype`` defaults to the arrays' common dtype; values are cast to it.
        """
        missing = [n for n in self._shapes if n not in arrays]
        extra = [n for n in arrays if n not in self._shapes]
        if missing or extra:
            raise ConfigError(
                f"flatten: names differ from the layout: missing {missing}, "
                f"unexpected {extra}"
            )
        checked = [expect_float(n, arrays[n]) for n in self._shapes]
        for name, arr in zip(self._shapes, checked, strict=True):
            expect_shape(name, arr, self._shapes[name])
        if dtype is None:
            dtype = expect_same_dtype(list(self._shapes), checked)
        flat = self.zeros(dtype)
        for view, arr in zip(self.views(flat).values(), checked, strict=True):
            view[...] = arr
        return flat


__all__ = [
    "CLIP_NORM_EPS",
    "ParamLayout",
    "validate_buffers",
    "validate_factor",
    "validate_flat",
    "validate_norm_type",
    "validate_positive",
    "validate_same_flat",
]
