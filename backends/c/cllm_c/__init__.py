"""The C SIMD backend: C99 kernels behind cffi, registered as ``c``.

Every function validates its inputs with the spec's checks (the same ones the
NumPy reference uses) and then calls a kernel of ``csrc/<component>.c``. The
kernels choose AVX-512, AVX2+FMA or scalar code at run time
(``CLLM_C_SCALAR=1`` forces scalar), run on ``CLLM_NUM_THREADS`` threads (default:
every core) and give the same bits for any thread count. The GIL is released
around every C call. float32 runs the SIMD kernels; float64 runs scalar twins
of the same formulas (the spec's second dtype, kept exact for the suite).

Large outputs (8 MB and up) live in memory mapped by the C side; once such an
array is garbage its mapping is kept (2 GiB at most) and handed to the next
output of the same size, so a training loop does not fault in and zero its
optimizer states and logits on every step.

``all_finite`` (:mod:`cllm_c.checks`) is the optional finite scan that
``cllm_spec.checks.expect_finite`` runs on parameters, gradients and optimizer
state. ``model_kernels`` (:mod:`cllm_c.model`) is the optional capability
``cllm_spec.model`` uses: its kernels without re-validation, writing parameter
gradients straight into the flat gradient buffer.

Beyond the protocol: ``set_num_threads(n)`` / ``num_threads()`` and
``set_simd(level)`` / ``simd_level()`` change the thread count and the SIMD
path at run time (tests compare them; results never depend on the threads).
"""

from __future__ import annotations

import platform
from typing import Any

import numpy as np

import cllm_spec
from cllm_c import model as model_kernels
from cllm_c._lib import (
    num_threads,
    set_num_threads,
    set_simd,
    simd_detected,
    simd_level,
)
from cllm_c.attention import (
    attention_backward,
    attention_forward,
    kv_cache_append,
    kv_cache_new,
    kv_cache_reset,
    mha_backward,
    mha_forward,
)
from cllm_c.batching import make_batch_pool, make_batch_queue
from cllm_c.checks import all_finite
from cllm_c.embedding import embedding_backward, embedding_forward
from cllm_c.ffn import (
    activation_backward,
    activation_forward,
    ffn_backward,
    ffn_forward,
    layernorm_backward,
    layernorm_forward,
    linear_backward,
    linear_forward,
)
from cllm_c.gradients import (
    clip_grad_norm,
    clip_grad_value,
    grad_accumulate,
    grad_global_norm,
    grad_scale,
    grad_stats,
    grad_tree_reduce,
)
from cllm_c.losses import (
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
from cllm_c.optim import adagrad_step, adam_step, adamw_step, rmsprop_step, sgd_step

name = "c"
version = cllm_spec.__version__
dtypes = (np.dtype(np.float32), np.dtype(np.float64))


def build_info() -> dict[str, Any]:
    """The SIMD level in use (and the best one detected) and the thread count."""
    return {
        "simd": simd_level(),
        "simd_detected": simd_detected(),
        "threads": num_threads(),
        "machine": platform.machine(),
    }


__all__ = [
    "activation_backward",
    "activation_forward",
    "adagrad_step",
    "adam_step",
    "adamw_step",
    "all_finite",
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
    "model_kernels",
    "mse_backward",
    "mse_forward",
    "name",
    "num_threads",
    "rmsprop_step",
    "set_num_threads",
    "set_simd",
    "sgd_step",
    "simd_level",
    "softmax_backward",
    "softmax_forward",
    "version",
]
