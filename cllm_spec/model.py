"""The GPT model: a forward/backward composed of kernels, on the configuration
and parameters of :mod:`cllm_spec.model_params` (re-exported here).

Shape letters: B batch, T tokens, V vocabulary size, C = n_embd, L = n_layer,
NH = n_head, HS = C / NH, F = n_hidden, T_max = block_size, P parameter count.

Architecture
============

GPT-2 shaped, pre-LayerNorm, no dropout::

    x      = wte[ids] + wpe[pos_offset + t]                      (B, T, C)
    for each of the L blocks:
        x  = x + MHA(LN_1(x))        causal self-attention, fused QKV
        x  = x + FFN(LN_2(x))        fc (F, C) -> activation -> proj (C, F)
    logits = LN_f(x) @ W_head^T                                  (B, T, V)
    W_head = wte (tied, the default) or lm_head.weight (untied); no bias

Every LayerNorm uses eps = 1e-5. Each step is one backend kernel
(``embedding_forward``, ``layernorm_forward``, ``mha_forward``, ``ffn_forward``,
``linear_forward``, ``cross_entropy_forward``); this module only composes them
and adds the residual streams. The same :func:`forward` serves training,
evaluation and generation (with KV caches), so the three cannot drift apart.

Loss
----
With ``targets: (B, T)`` the loss is the mean cross-entropy over the positions
whose target is not ``IGNORE_INDEX`` (-100, PyTorch's ``ignore_index``)::

    loss = sum_{(b,t): y != -100} (logsumexp(logits[b,t]) - logits[b,t,y]) / count

A padding mask is applied by the caller with :func:`mask_targets` (targets set to
-100 where ``mask == 0``), so there is exactly one convention inside the model.
A batch whose every target is ignored has the loss 0/0 = NaN (PyTorch's value).
``forward(..., loss_reduction="sum")`` returns the sum instead (0 for such a
batch), and :func:`backward` then gives the gradient of that sum: the
trainer's groups need the sum, and this skips a pass that multiplies the mean's
gradient back by ``count``.

A backward consumes its forward's cache, as PyTorch's backward frees its
graph: a second :func:`backward` of the same cache is a ConfigError on every
backend. Backends may reuse the cache's memory meanwhile (the C backend writes
the logits' gradient over the loss's probabilities, ``cache.loss.probs``, which
saves an (B*T, V) buffer: 491 MB on the production model).

KV caches and generation
========================

``init_kv_caches(backend, cfg, batch, dtype)`` returns L empty caches of T_max
positions. ``forward(..., kv_caches=caches, pos_offset=n)`` with every cache
holding exactly ``n`` positions embeds the T new tokens at positions n .. n+T-1,
appends their keys and values, and returns the logits of the T new tokens; the
appended caches are ``cache.kv_caches``. Feeding a sequence in chunks gives the
logits of one full forward. The backward of a forward that attended to cached
positions is ``Unsupported`` (training never uses the cache).

``logits="last"`` computes the final LayerNorm and the LM head for the last
position only and returns logits ``(B, 1, V)`` equal (up to rounding) to
``forward(...)[0][:, -1:]``: generation samples from the last position alone,
and the LM head is the largest matrix of the model (V x C), so a prefill of T
tokens would otherwise multiply it by T rows to keep one. Training and
evaluation use ``"all"`` (the default); ``"last"`` with targets is a
ConfigError (the loss needs every position).

Model kernels (an optional backend capability)
==============================================

:func:`forward` validates the whole call at its boundary (params, ids,
targets, every KV cache's buffers and room) and :func:`backward` its cache;
every other array a kernel then sees is one the model built, with shapes that
follow from the config. A backend may expose ``model_kernels``: an object with
the kernels above under the same names and arguments, which compute exactly
what the public ones do but skip the spec's per-kernel validation, and whose
backward functions take ``out=``, the views of the flat gradient buffer to
write the parameter gradients into, returning only the input gradient;
``embedding_backward(dx, cache, out=(dwte, dwpe))`` adds its scatter into them
instead; ``empty(shape, dtype)`` allocates the flat gradient buffer (the
backend may recycle memory); ``residual_layernorm_forward(x, r, weight, bias,
eps)`` returns ``(x + r, layernorm(x + r), cache)``, writing the sum over ``x``,
and ``layernorm_backward(..., add_to=dx)`` adds its input gradient into ``dx``
and returns it: the residual adds fused into the norms that follow them;
``cross_entropy_backward(dloss, cache)`` may write the gradient over
``cache.probs`` (the model's backward consumes its cache), and
``cross_entropy_forward(..., overwrite=True)`` (from :func:`forward_loss`,
which returns no logits) the probabilities over the logits.
:func:`forward` and :func:`backward` then use it, add residuals in place
(the residual stream is the model's own array, never cached by a kernel) and
never copy a gradient; a decoding step's kernels take their fast paths there
too (the C backend attends over the KV cache in place and multiplies a few
rows by streaming each weight once). ``model_kernels`` may also offer
``decode_last(cfg, flat, ids, kv_caches, pos_offset)``: the whole of
``forward(..., kv_caches=..., pos_offset=..., logits="last")`` in one call on
arguments already validated, returning the logits ``(B, 1, V)`` with the keys
and values appended into the caches' buffers, or None where it does not apply
(:func:`cllm_spec.generate.decode_last` falls back to :func:`forward` then),
``decode_session(cfg, flat, kv_caches)``: that step as a callable ``(ids,
pos_offset) -> logits`` over those caches for many calls (a decoder's, one
per token: :meth:`cllm_spec.generate.Decoder.feed_next`; a call may write
into an earlier call's logits only once nothing refers to them), or None where
``decode_last`` would not apply, and ``GROUP_MIN_ROWS`` with ``groups=`` on
its linear, ffn and mha backward: several groups of a training step in one
pass, each with its own bits
(:mod:`cllm_spec.model_groups`). A backend without model kernels runs the
plain composition. Both must compute the same function: the conformance suite
checks the model of every backend against the float64 oracle.

Checks, caches, config
======================

Every argument is checked before any kernel runs, by
:mod:`cllm_spec.model_checks` (its docstring lists the errors); a caller that
runs many forwards over one params buffer passes the :class:`CheckedParams`
of :func:`checked_params` to scan it for NaN and inf once. What a forward
keeps is :mod:`cllm_spec.model_caches`'s :class:`ModelCache`; the config,
names, layout and initialization are :mod:`cllm_spec.model_params`'s. This
module re-exports the public names of all three.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cllm_spec import checks
from cllm_spec.errors import ConfigError, DTypeError
from cllm_spec.model_caches import BlockCache, ModelCache, init_kv_caches
from cllm_spec.model_checks import (
    IGNORE_INDEX,
    LOGITS,
    CheckedParams,
    checked_params,
    validate_backward,
    validate_forward,
    validate_params,
    validate_targets,
)
from cllm_spec.model_params import (
    ACTIVATIONS,
    ATTN_PARAMS,
    DIMENSIONAL_FREQUENCIES,
    INIT_STD,
    INITS,
    LN_PARAMS,
    MLP_PARAMS,
    ModelConfig,
    head_param,
    init_params,
    lattice_embedding,
    param_count,
    param_layout,
    param_shapes,
    param_views,
)
from cllm_spec.protocols import KVCache, LayerNormCache

LN_EPS = 1e-5


def mask_targets(targets: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A copy of ``targets`` with ``IGNORE_INDEX`` where ``mask == 0``.

    ``targets: (B, T)`` int32|int64, ``mask: (B, T)`` integer or bool; the mask
    of :class:`cllm_spec.protocols.Batch` is 1 where a position counts.
    """
    checks.expect_int("targets", targets)
    m = checks.as_array("mask", mask)
    if m.dtype != np.bool_ and m.dtype.kind not in "iu":
        raise DTypeError(f"mask: expected an integer or bool mask, got {m.dtype}")
    checks.expect_shape("mask", m, targets.shape)
    return np.where(m != 0, targets, np.asarray(IGNORE_INDEX, dtype=targets.dtype))


# ---------------------------------------------------------------- forward -----
def forward(
    backend: Any,
    cfg: ModelConfig,
    params: np.ndarray | CheckedParams,
    ids: np.ndarray,
    targets: np.ndarray | None = None,
    *,
    kv_caches: Sequence[KVCache] | None = None,
    pos_offset: int = 0,
    logits: str = "all",
    loss_reduction: str = "mean",
) -> tuple[np.ndarray, float | None, ModelCache]:
    """Logits ``(B, T, V)``, the mean loss (None without targets) and the cache.

    ``params: (P,)`` float32|float64 (the dtype of the logits and of every
    cached array), or the :class:`CheckedParams` of such a buffer; ``ids:
    (B, T)`` int, ``targets: (B, T)`` int with -100 for ignored positions. The
    loss is returned as a Python float holding exactly the value the loss
    kernel computed in the params' dtype. ``logits="last"`` returns
    ``(B, 1, V)``, the last position's (module docstring, "KV caches and
    generation"); ``loss_reduction="sum"`` returns the summed loss instead of
    the mean, and :func:`backward` its gradient (module docstring, "Loss").
    """
    return _forward(
        backend, cfg, params, ids, targets, kv_caches, pos_offset, logits,
        loss_reduction, keep_logits=True,
    )  # fmt: skip


def forward_loss(
    backend: Any,
    cfg: ModelConfig,
    params: np.ndarray | CheckedParams,
    ids: np.ndarray,
    targets: np.ndarray,
    *,
    loss_reduction: str = "mean",
) -> tuple[float, ModelCache]:
    """Training's forward: the loss and the cache of ``forward(backend, cfg,
    params, ids, targets, loss_reduction=...)``, without the logits.

    With the logits nobody's, a backend's model kernels may write the loss's
    probabilities over their buffer (``cross_entropy_forward(...,
    overwrite=True)``): one (B*T, V) buffer fewer at the forward's peak, 491
    MB on the production model. :func:`backward` takes the cache as usual.
    """
    if targets is None:
        raise ConfigError(
            "forward_loss: targets are required", hint="use forward for logits alone"
        )
    _, loss, cache = _forward(
        backend, cfg, params, ids, targets, None, 0, "all", loss_reduction,
        keep_logits=False,
    )  # fmt: skip
    assert loss is not None  # targets were given
    return loss, cache


def _forward(
    backend: Any,
    cfg: ModelConfig,
    params: np.ndarray | CheckedParams,
    ids: np.ndarray,
    targets: np.ndarray | None,
    kv_caches: Sequence[KVCache] | None,
    pos_offset: int,
    logits: str,
    loss_reduction: str,
    *,
    keep_logits: bool,
) -> tuple[np.ndarray, float | None, ModelCache]:
    """:func:`forward`; ``keep_logits=False`` lets the loss kernel of model
    kernels overwrite the returned logits (:func:`forward_loss`)."""
    flat = validate_forward(
        backend, cfg, params, ids, targets, kv_caches, pos_offset, logits,
        loss_reduction,
    )  # fmt: skip
    k, direct = _kernels(backend)  # every argument is checked now
    w = param_views(cfg, flat)
    x, emb_cache = k.embedding_forward(
        ids, w["model.wte.weight"], w["model.wpe.weight"], pos_offset
    )  # (B, T, C)
    blocks = []
    new_caches = []
    for i in range(cfg.n_layer):
        p = f"model.h.{i}."
        kv = None if kv_caches is None else kv_caches[i]
        h, ln_1 = k.layernorm_forward(
            x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], LN_EPS
        )
        a, attn, kv = k.mha_forward(
            h,
            w[p + "attn.qkv.weight"],
            w[p + "attn.qkv.bias"],
            w[p + "attn.proj.weight"],
            w[p + "attn.proj.bias"],
            n_head=cfg.n_head,
            kv_cache=kv,
        )
        x, h, ln_2 = _residual_norm(
            k, direct, x, a, w[p + "ln_2.weight"], w[p + "ln_2.bias"]
        )  # x + a: the residual stream (B, T, C), and LN_2 of it
        m, mlp = k.ffn_forward(
            h,
            w[p + "mlp.fc.weight"],
            w[p + "mlp.fc.bias"],
            w[p + "mlp.proj.weight"],
            w[p + "mlp.proj.bias"],
            activation=cfg.activation,
        )
        x = _add(x, m, direct)  # (B, T, C)
        blocks.append(BlockCache(ln_1, attn, ln_2, mlp))
        new_caches.append(kv)
    if logits == "last":
        x = x[:, -1:]  # (B, 1, C): the only position generation samples from
    h, ln_f = k.layernorm_forward(
        x, w["model.ln_f.weight"], w["model.ln_f.bias"], LN_EPS
    )
    out, head = k.linear_forward(h, _head_weight(cfg, w), None)  # (B, T, V)
    loss = None
    loss_cache = None
    if targets is not None:
        b, t, v = out.shape
        reuse = {} if keep_logits or not direct else {"overwrite": True}
        value, loss_cache = k.cross_entropy_forward(
            out.reshape(b * t, v),  # (B*T, V)
            targets.reshape(b * t),
            ignore_index=IGNORE_INDEX,
            reduction=loss_reduction,
            **reuse,
        )
        loss = float(value)
    cache = ModelCache(
        emb_cache,
        tuple(blocks),
        ln_f,
        head,
        loss_cache,
        None if kv_caches is None else tuple(new_caches),
        out.dtype,
        [False],
    )
    return out, loss, cache


def _head_weight(cfg: ModelConfig, w: Mapping[str, np.ndarray]) -> np.ndarray:
    return w[head_param(cfg)]


def _kernels(backend: Any) -> tuple[Any, bool]:
    """The backend's model kernels and True, or the backend itself and False."""
    fast = getattr(backend, "model_kernels", None)
    return (backend, False) if fast is None else (fast, True)


def _residual_norm(
    k: Any,
    fused: bool,
    x: np.ndarray,
    r: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, LayerNormCache]:
    """``(x + r, layernorm(x + r), cache)``: one kernel with model kernels."""
    if fused:
        out: tuple[np.ndarray, np.ndarray, LayerNormCache]
        out = k.residual_layernorm_forward(x, r, weight, bias, LN_EPS)
        return out
    total = x + r
    h, cache = k.layernorm_forward(total, weight, bias, LN_EPS)
    return total, h, cache


def _add(x: np.ndarray, y: np.ndarray, in_place: bool) -> np.ndarray:
    """``x + y``; into ``x`` when it is the model's own array (model kernels)."""
    if in_place:
        np.add(x, y, out=x)
        return x
    total: np.ndarray = x + y
    return total


# --------------------------------------------------------------- backward -----
def _store(
    g: Mapping[str, np.ndarray],
    prefix: str,
    names: Sequence[str],
    result: Sequence[np.ndarray | None],
) -> np.ndarray:
    """Copy a kernel backward's parameter gradients into the flat buffer's views.

    ``result`` is ``(d_input, *d_params)``, the d_params in the order of
    ``names``; returns ``d_input``, the gradient to pass further down. (The
    model always has biases, so no d_param is None.)
    """
    d_input, *d_params = result
    for name, grad in zip(names, d_params, strict=True):
        g[prefix + name][...] = grad
    assert d_input is not None
    return d_input


def backward(
    backend: Any,
    cfg: ModelConfig,
    params: np.ndarray | CheckedParams,
    cache: ModelCache,
) -> np.ndarray:
    """d loss / d params as a new flat (P,) buffer in the params' layout and dtype.

    The reverse of :func:`forward`, kernel by kernel; a residual ``x + f(x)``
    passes its upstream gradient to both branches, and the tied embedding sums
    the gradients of its two uses (lookup and LM head).
    """
    validate_backward(backend, cfg, params, cache)  # backward reads no weights
    cache.spent[0] = True  # from here the kernels may reuse its buffers
    loss_cache = cache.loss
    assert loss_cache is not None  # checked by validate_backward
    k, direct = _kernels(backend)
    b, t = cache.embedding.ids.shape
    dloss = np.ones((), dtype=cache.dtype)
    dlogits = k.cross_entropy_backward(dloss, loss_cache)  # (B*T, V)
    dlogits = dlogits.reshape(b, t, -1)  # (B, T, V)

    layout = param_layout(cfg)
    grads = (
        k.empty((layout.size,), cache.dtype) if direct else layout.zeros(cache.dtype)
    )
    g = layout.views(grads)

    def param_grads(
        fn: Any, prefix: str, names: Sequence[str], dy: np.ndarray, kcache: Any
    ) -> np.ndarray:
        """Run a kernel backward; its parameter gradients land in ``g``."""
        if direct:
            out = tuple(g[prefix + name] for name in names)
            result: np.ndarray = fn(dy, kcache, out=out)
            return result
        return _store(g, prefix, names, fn(dy, kcache))

    def plus_norm_grad(
        prefix: str, dh: np.ndarray, ln: LayerNormCache, dx: np.ndarray
    ) -> np.ndarray:
        """``dx`` + the layer norm's input gradient (added into dx when direct)."""
        if direct:
            out = (g[prefix + "weight"], g[prefix + "bias"])
            result: np.ndarray = k.layernorm_backward(dh, ln, out=out, add_to=dx)
            return result
        dln = _store(g, prefix, LN_PARAMS, backend.layernorm_backward(dh, ln))
        total: np.ndarray = dx + dln
        return total

    head = head_param(cfg)
    if direct:
        dh = k.linear_backward(dlogits, cache.lm_head, out=(g[head],))
    else:
        dh, dhead, _ = backend.linear_backward(dlogits, cache.lm_head)
    dx = param_grads(k.layernorm_backward, "model.ln_f.", LN_PARAMS, dh, cache.ln_f)
    for i in reversed(range(cfg.n_layer)):
        p = f"model.h.{i}."
        blk = cache.blocks[i]
        dh = param_grads(k.ffn_backward, p, MLP_PARAMS, dx, blk.mlp)
        dx = plus_norm_grad(p + "ln_2.", dh, blk.ln_2, dx)
        dh = param_grads(k.mha_backward, p, ATTN_PARAMS, dx, blk.attn)
        dx = plus_norm_grad(p + "ln_1.", dh, blk.ln_1, dx)
    wte, wpe = g["model.wte.weight"], g["model.wpe.weight"]
    if direct:
        # the scatter adds onto the LM head's gradient when the two are tied
        wpe[...] = 0
        if not cfg.tie_embeddings:
            wte[...] = 0
        k.embedding_backward(dx, cache.embedding, out=(wte, wpe))
        return grads
    dwte, wpe[...] = backend.embedding_backward(dx, cache.embedding)
    if cfg.tie_embeddings:
        wte[...] = dwte + dhead  # lookup + LM head
    else:
        wte[...] = dwte
        g["model.lm_head.weight"][...] = dhead
    return grads


__all__ = [
    "ACTIVATIONS",
    "DIMENSIONAL_FREQUENCIES",
    "IGNORE_INDEX",
    "INITS",
    "LOGITS",
    "INIT_STD",
    "LN_EPS",
    "BlockCache",
    "CheckedParams",
    "ModelCache",
    "ModelConfig",
    "backward",
    "checked_params",
    "forward",
    "forward_loss",
    "init_kv_caches",
    "init_params",
    "lattice_embedding",
    "mask_targets",
    "param_count",
    "param_layout",
    "param_shapes",
    "param_views",
    "validate_backward",
    "validate_forward",
    "validate_params",
    "validate_targets",
]
