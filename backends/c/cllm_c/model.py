"""The kernels of :mod:`cllm_spec.model`'s composition, without re-validation.

``cllm_spec.model.forward`` and ``backward`` validate the parameters, ids,
targets and caches once at their public boundary; every array they then hand
a kernel is one they built, with shapes that follow from the config. A backend
that exposes ``model_kernels`` (this module) lets the model call them without
the spec's per-kernel validators (the C-side size and id checks stay), and its
backward functions write the parameter gradients into the caller's views of
the flat gradient buffer (``out=``) instead of returning new arrays to copy.
The forward entry points are also the decoding path's: ``mha_forward`` over a
nonempty contiguous float32 KV cache attends over it in place in one C call
(``cllm_mha_decode``), ``ffn_forward`` is one C call per block, and
``linear_forward`` of a few rows streams the weight once (csrc/gemv.c); the
model validated the caches' buffers and room before (``validate_forward``).
``decode_last`` (cllm_c/decode.py) is all of that for a decoding step in one C
call, the whole model from the embedding to the last position's logits.

The contract (``cllm_spec.model`` documents it as the "model kernels"
capability): the same names, arguments and results as the public kernels, and

- ``layernorm_backward(dy, cache, out=(dweight, dbias))``,
  ``mha_backward(dy, cache, out=(dw_qkv, db_qkv, dw_proj, db_proj))``,
  ``ffn_backward(dy, cache, out=(dw_fc, db_fc, dw_proj, db_proj))`` and
  ``linear_backward(dy, cache, out=(dw,))`` (no bias) overwrite ``out`` and
  return the input gradient alone;
- with ``groups=[(b0, b1), ...]`` (batch-row ranges), ``linear_backward``,
  ``mha_backward`` and ``ffn_backward`` take ``out`` as one such tuple per
  group: the input gradient of every row, and each group's parameter
  gradients over its rows alone, with the bits of the call on that group's
  rows (:func:`cllm_spec.model_groups.group_losses_and_gradients`);
- ``embedding_backward(dx, cache, out=(dwte, dwpe))`` ADDS its scatter into
  ``out`` (the caller zeroes them, or leaves the LM head's gradient in dwte);
- ``empty(shape, dtype)`` is the backend's output allocator (recycled buffers),
  for the flat gradient buffer;
- ``residual_layernorm_forward(x, res, weight, bias, eps)`` returns
  ``(x + res, layernorm(x + res), cache)``, the sum written over ``x`` (the
  model's own residual stream), in one pass per row;
  ``layernorm_backward(..., add_to=dx)`` adds the input gradient into ``dx``
  (the residual stream's gradient, the model's own array) and returns it;
- ``cross_entropy_backward`` writes the logits' gradient over ``cache.probs``
  (the model's backward consumes its cache), and ``cross_entropy_forward(...,
  overwrite=True)`` the probabilities over the logits (the model's
  ``forward_loss`` returns none): one (N, V) buffer fewer each. Here the
  forward writes the gradient itself, for the ``dloss`` of 1 the model's
  backward passes, in place of the probabilities (row by row, while the row
  is in the cache), and the backward hands it on: one pass over (N, V) fewer
  per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cllm_c._lib import empty, lib
from cllm_c.attention import _mha, _mha_backward, _mha_backward_groups
from cllm_c.decode import decode_last, decode_session
from cllm_c.embedding import _embedding, _embedding_add_backward
from cllm_c.ffn import (
    _ffn,
    _ffn_backward,
    _ffn_backward_groups,
    _layernorm,
    _layernorm_backward,
    _linear,
    _linear_backward,
    _linear_backward_groups,
    _residual_layernorm,
)
from cllm_c.losses import GradientCache, _cross_entropy, _cross_entropy_backward
from cllm_spec.errors import ConfigError
from cllm_spec.protocols import (
    CrossEntropyCache,
    EmbeddingCache,
    FFNCache,
    KVCache,
    LayerNormCache,
    LinearCache,
    MHACache,
)

#: ``groups=`` gives each group its own bits when each has at least this many
#: token rows: ``linear_forward`` sends fewer to the matrix-vector path
#: (csrc/gemv.c), which sums in another order than the GEMM, so a small group
#: run alone and run with others would differ.
GROUP_MIN_ROWS = int(lib.CLLM_GEMV_MAX_ROWS) + 1


def embedding_forward(
    ids: np.ndarray, wte: np.ndarray, wpe: np.ndarray, pos_offset: int = 0
) -> tuple[np.ndarray, EmbeddingCache]:
    return _embedding(ids, wte, wpe, int(pos_offset))


def embedding_backward(
    dx: np.ndarray, cache: EmbeddingCache, *, out: tuple[np.ndarray, np.ndarray]
) -> None:
    _embedding_add_backward(dx, cache, *out)


def layernorm_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5
) -> tuple[np.ndarray, LayerNormCache]:
    return _layernorm(x, weight, bias, float(eps))


def residual_layernorm_forward(
    x: np.ndarray, res: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray, LayerNormCache]:
    x_new = x  # the sum is written over x, the model's own residual stream
    y, cache = _residual_layernorm(x_new, res, weight, bias, float(eps))
    return x_new, y, cache


def layernorm_backward(
    dy: np.ndarray,
    cache: LayerNormCache,
    *,
    out: tuple[np.ndarray, np.ndarray],
    add_to: np.ndarray | None = None,
) -> np.ndarray:
    return _layernorm_backward(dy, cache, *out, add_to=add_to)[0]


def mha_forward(
    x: np.ndarray,
    w_qkv: np.ndarray,
    b_qkv: np.ndarray | None,
    w_proj: np.ndarray,
    b_proj: np.ndarray | None,
    *,
    n_head: int,
    kv_cache: KVCache | None = None,
) -> tuple[np.ndarray, MHACache, KVCache | None]:
    return _mha(x, w_qkv, b_qkv, w_proj, b_proj, int(n_head), kv_cache)


def mha_backward(
    dy: np.ndarray,
    cache: MHACache,
    *,
    out: Any,
    groups: Sequence[tuple[int, int]] | None = None,
) -> np.ndarray:
    if groups is not None:
        return _mha_backward_groups(dy, cache, groups, out)
    return _mha_backward(dy, cache, out)[0]


def ffn_forward(
    x: np.ndarray,
    w_fc: np.ndarray,
    b_fc: np.ndarray | None,
    w_proj: np.ndarray,
    b_proj: np.ndarray | None,
    *,
    activation: str = "gelu",
) -> tuple[np.ndarray, FFNCache]:
    return _ffn(x, w_fc, b_fc, w_proj, b_proj, str(activation))


def ffn_backward(
    dy: np.ndarray,
    cache: FFNCache,
    *,
    out: Any,
    groups: Sequence[tuple[int, int]] | None = None,
) -> np.ndarray:
    if groups is not None:
        return _ffn_backward_groups(dy, cache, groups, out)
    return _ffn_backward(dy, cache, out)[0]


def linear_forward(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None
) -> tuple[np.ndarray, LinearCache]:
    return _linear(x, w, b)


def linear_backward(
    dy: np.ndarray,
    cache: LinearCache,
    *,
    out: Any,
    groups: Sequence[tuple[int, int]] | None = None,
) -> np.ndarray:
    if groups is not None:
        return _linear_backward_groups(dy, cache, groups, [(o[0], None) for o in out])
    return _linear_backward(dy, cache, out[0])[0]


def cross_entropy_forward(
    logits: np.ndarray,
    targets: np.ndarray,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    overwrite: bool = False,
) -> tuple[np.ndarray, CrossEntropyCache]:
    ignore = int(ignore_index)
    return _cross_entropy(
        logits, targets, ignore, 0.0, reduction, in_place=overwrite, grad=True
    )


def cross_entropy_backward(dloss: np.ndarray, cache: CrossEntropyCache) -> np.ndarray:
    if isinstance(cache, GradientCache):  # the forward's gradient, for dloss = 1
        if np.shape(dloss) != () or float(dloss) != 1.0:
            raise ConfigError(
                f"cross_entropy_backward: the model's gradient is for dloss = 1, "
                f"got {dloss!r}"
            )
        return cache.probs
    # the model's backward consumes its cache: the gradient reuses probs' memory
    return _cross_entropy_backward(dloss, cache, in_place=True)


__all__ = [
    "GROUP_MIN_ROWS",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "decode_last",
    "decode_session",
    "embedding_backward",
    "embedding_forward",
    "empty",
    "ffn_backward",
    "ffn_forward",
    "layernorm_backward",
    "layernorm_forward",
    "linear_backward",
    "linear_forward",
    "mha_backward",
    "mha_forward",
    "residual_layernorm_forward",
]
