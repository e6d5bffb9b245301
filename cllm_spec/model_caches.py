"""What a forward of the GPT model (:mod:`cllm_spec.model`) keeps: the
:class:`ModelCache` that its backward consumes (per block, the caches of the
block's kernels) and the KV caches of generation (:func:`init_kv_caches`).
Shape letters as there: L = n_layer, NH = n_head, HS = C / NH, T_max =
block_size.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from cllm_spec.model_params import ModelConfig
from cllm_spec.protocols import (
    CrossEntropyCache,
    EmbeddingCache,
    FFNCache,
    KVCache,
    LayerNormCache,
    LinearCache,
    MHACache,
)


class BlockCache(NamedTuple):
    ln_1: LayerNormCache
    attn: MHACache
    ln_2: LayerNormCache
    mlp: FFNCache


class ModelCache(NamedTuple):
    embedding: EmbeddingCache
    blocks: tuple[BlockCache, ...]
    ln_f: LayerNormCache
    lm_head: LinearCache
    loss: CrossEntropyCache | None  # None when forward had no targets
    kv_caches: tuple[KVCache, ...] | None  # the appended caches, when given
    dtype: np.dtype
    spent: list[bool]  # [True] once a backward consumed it (cllm_spec.model, "Loss")


def init_kv_caches(
    backend: Any, cfg: ModelConfig, batch: int, dtype: Any
) -> tuple[KVCache, ...]:
    """L empty KV caches of T_max positions for ``batch`` sequences."""
    return tuple(
        backend.kv_cache_new(batch, cfg.n_head, cfg.block_size, cfg.head_size, dtype)
        for _ in range(cfg.n_layer)
    )


__all__ = ["BlockCache", "ModelCache", "init_kv_caches"]
