"""The NumPy reference backend: the executable form of the spec.

Every function follows the spec module of its component (``cllm_spec.<component>``)
in float32 and float64, vectorized over tokens, rows, heads and parameters. Run in
float64 it is the oracle the conformance suite compares other backends with.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import cllm_spec
from cllm_numpy.attention import (
    attention_backward,
    attention_forward,
    kv_cache_append,
    kv_cache_new,
    kv_cache_reset,
    mha_backward,
    mha_forward,
)
from cllm_numpy.batching import make_batch_pool, make_batch_queue
from cllm_numpy.embedding import embedding_backward, embedding_forward
from cllm_numpy.ffn import (
    activation_backward,
    activation_forward,
    ffn_backward,
    ffn_forward,
    layernorm_backward,
    layernorm_forward,
    linear_backward,
    linear_forward,
)
from cllm_numpy.gradients import (
    clip_grad_norm,
    clip_grad_value,
    grad_accumulate,
    grad_global_norm,
    grad_scale,
    grad_stats,
    grad_tree_reduce,
)
from cllm_numpy.losses import (
    cross_entropy_backward,
    cross_entropy_forward,
    huber_backward,
    huber_forward,
    l1_backward,
    l1_forward,
    log_softmax_backward,
    log_softmax_forward,
    mse_backward,
    mse_forward,
    softmax_backward,
    softmax_forward,
)
from cllm_numpy.optim import (
    adagrad_step,
    adam_step,
    adamw_step,
    rmsprop_step,
    sgd_step,
)

name = "numpy"
version = cllm_spec.__version__
dtypes = (np.dtype(np.float32), np.dtype(np.float64))


def build_info() -> dict[str, Any]:
    """What this backend runs on: NumPy's version and its BLAS."""
    blas = ""
    try:
        from threadpoolctl import threadpool_info

        blas = ", ".join(
            f"{i.get('internal_api')} {i.get('version')}" for i in threadpool_info()
        )
    except ImportError:  # threadpoolctl is optional; the version is enough
        pass
    return {"numpy": np.__version__, "blas": blas or "unknown", "simd": "numpy"}


__all__ = [
    "activation_backward",
    "activation_forward",
    "adagrad_step",
    "adam_step",
    "adamw_step",
    "attention_backward",
    "attention_forward",
    "build_info",
    "clip_grad_norm",
    "clip_grad_value",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "dtypes",
    "embedding_backward",
    "embedding_forward",
    "ffn_backward",
    "ffn_forward",
    "grad_accumulate",
    "grad_global_norm",
    "grad_scale",
    "grad_stats",
    "grad_tree_reduce",
    "huber_backward",
    "huber_forward",
    "kv_cache_append",
    "kv_cache_new",
    "kv_cache_reset",
    "l1_backward",
    "l1_forward",
    "layernorm_backward",
    "layernorm_forward",
    "linear_backward",
    "linear_forward",
    "log_softmax_backward",
    "log_softmax_forward",
    "make_batch_pool",
    "make_batch_queue",
    "mha_backward",
    "mha_forward",
    "mse_backward",
    "mse_forward",
    "name",
    "rmsprop_step",
    "sgd_step",
    "softmax_backward",
    "softmax_forward",
    "version",
]
