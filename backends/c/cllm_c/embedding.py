"""Embedding on the C kernels of ``csrc/embedding.c``.

The math and error contract are in :mod:`cllm_spec.embedding`. Ids reach C as
int64 and C checks them against [0, V) again before any lookup.
"""

from __future__ import annotations

import numpy as np

from cllm_c._lib import arr, check, empty, ids64, kernel, ptr
from cllm_spec.embedding import validate_embedding, validate_embedding_backward
from cllm_spec.errors import ShapeError
from cllm_spec.protocols import EmbeddingCache


def embedding_forward(
    ids: np.ndarray, wte: np.ndarray, wpe: np.ndarray, pos_offset: int = 0
) -> tuple[np.ndarray, EmbeddingCache]:
    """x[b, t] = wte[ids[b, t]] + wpe[pos_offset + t]."""
    validate_embedding(ids, wte, wpe, pos_offset)
    return _embedding(ids, wte, wpe, int(pos_offset))


def _embedding(
    ids: np.ndarray, wte: np.ndarray, wpe: np.ndarray, pos_offset: int
) -> tuple[np.ndarray, EmbeddingCache]:
    te, pe = arr("wte", wte), arr("wpe", wpe)
    b, t = ids.shape
    (v, c), t_max = te.shape, pe.shape[0]
    _, ip = ids64(ids)
    x = empty((b, t, c), dtype=te.dtype)
    status = kernel("cllm_embedding_forward", te.dtype)(
        ip, ptr(te), ptr(pe), b, t, c, v, t_max, int(pos_offset), ptr(x)
    )
    check(status, "embedding_forward")
    return x, EmbeddingCache(ids.copy(), v, t_max, int(pos_offset))


def embedding_backward(
    dx: np.ndarray, cache: EmbeddingCache
) -> tuple[np.ndarray, np.ndarray]:
    """(dwte, dwpe): scatter-add of dx into the token rows, batch sum per position."""
    validate_embedding_backward(dx, cache)
    c = dx.shape[-1]
    # zeros come from calloc: untouched rows of a large table cost nothing
    dwte = np.zeros((cache.vocab_size, c), dtype=dx.dtype)
    dwpe = np.zeros((cache.n_positions, c), dtype=dx.dtype)
    _embedding_add_backward(dx, cache, dwte, dwpe)
    return dwte, dwpe


def _embedding_add_backward(
    dx: np.ndarray, cache: EmbeddingCache, dwte: np.ndarray, dwpe: np.ndarray
) -> None:
    """ADD the scatter of ``dx`` into ``dwte: (V, C)`` and ``dwpe: (T_max, C)``."""
    ids, vocab_size, n_positions, offset = cache
    g = arr("dx", dx)
    b, t, c = g.shape
    for name, a, shape in (
        ("dwte", dwte, (vocab_size, c)),
        ("dwpe", dwpe, (n_positions, c)),
    ):
        if arr(name, a, g.dtype, shape) is not a or not a.flags.writeable:
            raise ShapeError(f"{name}: expected a writable C-contiguous array")
    _, ip = ids64(ids)
    status = kernel("cllm_embedding_backward", g.dtype)(
        ptr(g), ip, b, t, c, vocab_size, n_positions, offset, ptr(dwte), ptr(dwpe)
    )
    check(status, "embedding_backward")
