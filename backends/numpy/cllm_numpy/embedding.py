"""Embedding in NumPy; the math and the errors are in ``cllm_spec.embedding``."""

from __future__ import annotations

import numpy as np

from cllm_spec.embedding import validate_embedding, validate_embedding_backward
from cllm_spec.protocols import EmbeddingCache


def embedding_forward(
    ids: np.ndarray, wte: np.ndarray, wpe: np.ndarray, pos_offset: int = 0
) -> tuple[np.ndarray, EmbeddingCache]:
    """x[b, t] = wte[ids[b, t]] + wpe[pos_offset + t]."""
    validate_embedding(ids, wte, wpe, pos_offset)
    offset = int(pos_offset)
    t = ids.shape[1]
    x = wte[ids] + wpe[offset : offset + t]  # (B, T, C)
    return x, EmbeddingCache(ids.copy(), wte.shape[0], wpe.shape[0], offset)


def embedding_backward(
    dx: np.ndarray, cache: EmbeddingCache
) -> tuple[np.ndarray, np.ndarray]:
    """(dwte, dwpe): scatter-add of dx into the token rows, batch sum per position."""
    validate_embedding_backward(dx, cache)
    ids, vocab_size, n_positions, offset = cache
    c = dx.shape[-1]
    dwte = np.zeros((vocab_size, c), dtype=dx.dtype)
    # unbuffered add: a repeated id accumulates every occurrence, in a fixed order
    np.add.at(dwte, ids.reshape(-1), dx.reshape(-1, c))  # (V, C)
    dwpe = np.zeros((n_positions, c), dtype=dx.dtype)
    dwpe[offset : offset + ids.shape[1]] = dx.sum(axis=0)  # (T, C)
    return dwte, dwpe
