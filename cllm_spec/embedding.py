"""Embedding: token plus learned position embeddings, and their scatter-add backward.

Shape letters: B batch, T tokens, V vocabulary size, C channels, T_max the
number of rows of the position table.

Forward
=======

``embedding_forward(ids, wte, wpe, pos_offset=0) -> (x, EmbeddingCache)``::

    ids: (B, T) int32 | int64       token ids, 0 <= id < V
    wte: (V, C) float32 | float64   token embedding table
    wpe: (T_max, C) same dtype      position embedding table
    pos_offset: int >= 0            absolute position of ids[:, 0]
    x:   (B, T, C) same dtype

    x[b, t, :] = wte[ids[b, t], :] + wpe[pos_offset + t, :]

This is GPT-2's input layer: ``nn.Embedding(V, C)(ids) + nn.Embedding(T_max,
C)(pos_offset + arange(T))``. ``pos_offset`` lets incremental decoding embed the
new tokens at their absolute positions (it equals the KV cache length). The
cache is ``EmbeddingCache(ids, V, T_max, pos_offset)``; ``ids`` is a copy, so a
caller may refill its batch buffer before the backward.

Backward
========

``embedding_backward(dx, cache) -> (dwte, dwpe)`` with ``dx: (B, T, C)``::

    dwte[v, :]            = sum_{(b, t): ids[b, t] == v} dx[b, t, :]     (V, C)
    dwpe[pos_offset + t]  = sum_b dx[b, t, :]                           (T_max, C)

and zero everywhere else. A token that appears n times receives the sum of its n
upstream gradients (scatter-add, as ``nn.Embedding`` without ``padding_idx``);
positions outside ``[pos_offset, pos_offset + T)`` get zeros. The gradients have
dx's dtype.

Errors
======

``ids`` not an int32/int64 ndarray, a table that is not float32/float64, or two
tables of different dtypes: ``DTypeError`` (nothing is cast: float or bool ids
are rejected). Wrong rank, tables with different C, ``pos_offset + T > T_max``,
or ``dx`` whose (B, T) differs from the forward's: ``ShapeError``. An id outside
``[0, V)``, negative ids included (PyTorch raises an index error too):
``IdRangeError``. Zero-size ``ids`` or tables: ``EmptyInputError``.
``pos_offset`` not an int >= 0: ``ConfigError``. NaN and inf in the tables and
in ``dx`` are allowed and propagate exactly as in PyTorch: a lookup and a sum
neither create nor amplify them, so they stay at the positions that hold them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cllm_spec import checks
from cllm_spec.errors import ConfigError, ShapeError
from cllm_spec.protocols import EmbeddingCache

#: The largest gradient table embedding_backward allocates (vocab or positions
#: times channels): far beyond any model here, and never a runaway allocation.
MAX_TABLE_ELEMENTS = 2**32


def validate_embedding(ids: Any, wte: Any, wpe: Any, pos_offset: Any) -> None:
    """The checks of ``embedding_forward`` (see the module docstring)."""
    offset = checks.expect_nonnegative_int("pos_offset", pos_offset)
    checks.expect_int("ids", ids)
    checks.expect_rank("ids", ids, 2)
    checks.expect_nonempty("ids", ids)
    for name, table in (("wte", wte), ("wpe", wpe)):
        checks.expect_float(name, table)
        checks.expect_rank(name, table, 2)
        checks.expect_nonempty(name, table)
    checks.expect_same_dtype(("wte", "wpe"), (wte, wpe))
    checks.expect_shape("wpe", wpe, (None, wte.shape[1]))
    t, t_max = ids.shape[1], wpe.shape[0]
    if offset + t > t_max:
        raise ShapeError(
            f"positions [{offset}, {offset + t}) exceed the position table "
            f"(T_max={t_max})",
            hint="the context is longer than the model's n_positions",
        )
    checks.expect_ids("ids", ids, wte.shape[0])


def validate_embedding_backward(dx: Any, cache: Any) -> None:
    """The checks of ``embedding_backward``: dx matches the forward's (B, T)."""
    checks.expect_cache(cache, EmbeddingCache)
    checks.expect_rank("cache.ids", cache.ids, 2)
    checks.expect_nonempty("cache.ids", cache.ids)
    for name in ("vocab_size", "n_positions"):
        checks.expect_positive_int(f"cache.{name}", getattr(cache, name))
    if cache.pos_offset + cache.ids.shape[1] > cache.n_positions:
        raise ShapeError(
            f"cache: positions [{cache.pos_offset}, "
            f"{cache.pos_offset + cache.ids.shape[1]}) exceed "
            f"n_positions={cache.n_positions}"
        )
    checks.expect_ids("cache.ids", cache.ids, cache.vocab_size)
    c = dx.shape[-1] if isinstance(dx, np.ndarray) and dx.ndim else 1
    for name in ("vocab_size", "n_positions"):
        rows = getattr(cache, name)
        if rows * c > MAX_TABLE_ELEMENTS:
            raise ConfigError(
                f"cache.{name}: a ({rows}, {c}) gradient table exceeds "
                f"{MAX_TABLE_ELEMENTS} elements",
                hint="pass the cache returned by embedding_forward",
            )
    checks.expect_float("dx", dx)
    checks.expect_rank("dx", dx, 3)
    checks.expect_shape("dx", dx, (*cache.ids.shape, None))
    checks.expect_nonempty("dx", dx)
