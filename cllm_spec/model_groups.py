"""Several groups of a training step in one forward and backward, each group
with the loss and gradient it has alone.

A step's groups (:mod:`cllm_spec.parallel`) are row ranges of a batch, and
:func:`cllm_spec.train.step.group_gradients` runs each through its own
:func:`~cllm_spec.model.forward_loss` and :func:`~cllm_spec.model.backward`.
Most of that work treats every row (token) on its own: the embedding, the
layer norms, the matrix products of the forward and of the input gradients,
the activations, the attention (one sequence at a time). Run on the rows of
all the groups at once, those give each row the bits it has in its own
group's pass, with one kernel call where there were one per group. What does
mix rows is a sum over them, and those are kept per group::

    loss_g      = cross_entropy_forward(logits[rows_g], reduction="sum")
    dW_g, db_g  = linear_backward(dy[rows_g], x[rows_g])   (every linear layer)
    dLN_g       = layernorm_backward(dy[rows_g], ...)      (weight and bias)
    dwte_g, ... = embedding_backward(dx[rows_g], ids[rows_g])

each the same kernel call on the same rows as in the group's own pass. So
:func:`group_losses_and_gradients` returns, for each group, the bits of
``forward_loss`` and ``backward`` on that group alone, which is what keeps
any number of workers or ranks on the same bits however the groups are
batched.

It needs a backend whose model kernels take ``groups=`` (the C backend; see
``cllm_c.model``) and groups of at least ``model_kernels.GROUP_MIN_ROWS``
token rows each; :func:`supports` says whether a call qualifies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cllm_spec.model import (
    IGNORE_INDEX,
    CheckedParams,
    ModelCache,
    ModelConfig,
    forward,
    param_layout,
    validate_targets,
)
from cllm_spec.model_params import ATTN_PARAMS, LN_PARAMS, MLP_PARAMS, head_param
from cllm_spec.protocols import EmbeddingCache, LayerNormCache


def supports(backend: Any, group_rows: Sequence[int], t: int) -> bool:
    """True when ``backend`` can run groups of ``group_rows`` sequences of
    ``t`` tokens together with each group's own bits."""
    k = getattr(backend, "model_kernels", None)
    least = getattr(k, "GROUP_MIN_ROWS", None)
    return least is not None and all(rows * t >= least for rows in group_rows)


def group_losses_and_gradients(
    backend: Any,
    cfg: ModelConfig,
    params: np.ndarray | CheckedParams,
    ids: np.ndarray,
    targets: np.ndarray,
    groups: Sequence[tuple[int, int]],
) -> list[tuple[float, np.ndarray]]:
    """``(summed loss, d(summed loss)/d params)`` of each group.

    ``ids, targets: (B, T)`` hold the groups' rows; group ``i`` is the batch
    rows ``groups[i] = (b0, b1)``, the groups disjoint and covering every row
    (a row in no group would carry an unwritten gradient). The caller checks
    :func:`supports` first. A loss may come out NaN or inf (the caller
    decides); its gradient is then computed all the same.
    """
    k = backend.model_kernels
    # forward_loss's checks, before any kernel runs: the targets here, the
    # params and ids in forward
    validate_targets(cfg, targets, np.shape(ids))
    logits, _, cache = forward(backend, cfg, params, ids)  # (B, T, V)
    b, t, v = logits.shape
    flat, tflat = logits.reshape(b * t, v), targets.reshape(b * t)
    losses, loss_caches = [], []
    for b0, b1 in groups:
        value, loss_cache = k.cross_entropy_forward(
            flat[b0 * t : b1 * t],
            tflat[b0 * t : b1 * t],
            ignore_index=IGNORE_INDEX,
            reduction="sum",
            overwrite=True,  # the probabilities over the group's logits
        )
        losses.append(float(value))
        loss_caches.append(loss_cache)
    grads = _backward(k, cfg, cache, logits, loss_caches, groups)
    return list(zip(losses, grads, strict=True))


def _backward(
    k: Any,
    cfg: ModelConfig,
    cache: ModelCache,
    logits: np.ndarray,
    loss_caches: Sequence[Any],
    groups: Sequence[tuple[int, int]],
) -> list[np.ndarray]:
    """:func:`cllm_spec.model.backward` with a gradient buffer per group."""
    dloss = np.ones((), dtype=cache.dtype)
    for loss_cache in loss_caches:  # each writes its rows of dlogits over logits
        k.cross_entropy_backward(dloss, loss_cache)
    dlogits = logits  # (B, T, V)
    layout = param_layout(cfg)
    grads = [k.empty((layout.size,), cache.dtype) for _ in groups]
    views = [layout.views(g) for g in grads]

    def outs(prefix: str, names: Sequence[str]) -> list[tuple[np.ndarray, ...]]:
        return [tuple(g[prefix + n] for n in names) for g in views]

    def norm(prefix: str, dh: np.ndarray, ln: LayerNormCache, dx: Any) -> Any:
        """Each group's layer-norm backward on its rows; the input gradient
        added into ``dx`` or, when ``dx`` is None, into a new array."""
        total = k.empty(dh.shape, cache.dtype) if dx is None else dx
        for (b0, b1), (gw, gb) in zip(groups, outs(prefix, LN_PARAMS), strict=True):
            part = LayerNormCache(ln.x_hat[b0:b1], ln.rstd[b0:b1], ln.weight)
            if dx is None:
                total[b0:b1] = k.layernorm_backward(dh[b0:b1], part, out=(gw, gb))
            else:
                k.layernorm_backward(dh[b0:b1], part, out=(gw, gb), add_to=dx[b0:b1])
        return total

    head = (head_param(cfg),)
    dh = k.linear_backward(dlogits, cache.lm_head, out=outs("", head), groups=groups)
    dx = norm("model.ln_f.", dh, cache.ln_f, None)
    for i in reversed(range(cfg.n_layer)):
        p, blk = f"model.h.{i}.", cache.blocks[i]
        dh = k.ffn_backward(dx, blk.mlp, out=outs(p, MLP_PARAMS), groups=groups)
        dx = norm(p + "ln_2.", dh, blk.ln_2, dx)
        dh = k.mha_backward(dx, blk.attn, out=outs(p, ATTN_PARAMS), groups=groups)
        dx = norm(p + "ln_1.", dh, blk.ln_1, dx)
    emb = cache.embedding
    for (b0, b1), g in zip(groups, views, strict=True):
        wte, wpe = g["model.wte.weight"], g["model.wpe.weight"]
        wpe[...] = 0  # the scatter adds onto the LM head's gradient when tied
        if not cfg.tie_embeddings:
            wte[...] = 0
        part = EmbeddingCache(emb.ids[b0:b1], *emb[1:])
        k.embedding_backward(dx[b0:b1], part, out=(wte, wpe))
    return grads


__all__ = ["group_losses_and_gradients", "supports"]
