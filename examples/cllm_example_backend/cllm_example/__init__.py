"""An example CLLM backend: the regression losses of its own, the rest borrowed.

A backend is a module with the attributes below and every function of
``cllm_spec.protocols.Backend`` (``cllm_spec.protocols.COMPONENT_FUNCTIONS``
lists them by component). It is found through the entry point in this
package's ``pyproject.toml``; ``cllm conformance --backend example`` checks it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Everything not written here yet comes from the NumPy reference backend. A
# new backend starts like this and replaces one component at a time.
from cllm_numpy import (  # noqa: F401
    activation_backward,
    activation_forward,
    adagrad_step,
    adam_step,
    adamw_step,
    attention_backward,
    attention_forward,
    clip_grad_norm,
    clip_grad_value,
    cross_entropy_backward,
    cross_entropy_forward,
    embedding_backward,
    embedding_forward,
    ffn_backward,
    ffn_forward,
    grad_accumulate,
    grad_global_norm,
    grad_scale,
    grad_stats,
    grad_tree_reduce,
    kv_cache_append,
    kv_cache_new,
    kv_cache_reset,
    layernorm_backward,
    layernorm_forward,
    linear_backward,
    linear_forward,
    log_softmax_backward,
    log_softmax_forward,
    make_batch_pool,
    make_batch_queue,
    mha_backward,
    mha_forward,
    rmsprop_step,
    sgd_step,
    softmax_backward,
    softmax_forward,
)

from cllm_example.losses import (  # noqa: F401
    huber_backward,
    huber_forward,
    l1_backward,
    l1_forward,
    mse_backward,
    mse_forward,
)

name = "example"  # how the backend calls itself in build reports
version = "0.1.0"
dtypes = (np.dtype(np.float32), np.dtype(np.float64))  # the float dtypes it computes in


def build_info() -> dict[str, Any]:
    """Anything that explains this backend's numbers: versions, SIMD, threads."""
    return {"numpy": np.__version__, "losses": "own", "others": "cllm_numpy"}
