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

Checked params
==============

A caller that runs many forwards (and backwards) over one params buffer passes
the :class:`CheckedParams` of :func:`checked_params`: the O(P) scan for NaN and
inf then runs once, not once per call (the trainer checks once per step for
its 12 groups, the decoder of :mod:`cllm_spec.generate` once per generation,
not once per token). The other checks are cheap and stay.

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
and ``GROUP_MIN_ROWS`` with ``groups=`` on its linear, ffn and mha backward:
several groups of a training step in one pass, each with its own bits
(:mod:`cllm_spec.model_groups`). A backend without model kernels runs the
plain composition. Both must compute the same function: the conformance suite
checks the model of every backend against the float64 oracle.

Errors (checked before any kernel runs)
=======================================
- ConfigError: a ModelConfig field out of range (the message names the field),
  ``cfg`` not a ModelConfig, ``pos_offset`` not an int >= 0, ``kv_caches`` not
  a sequence of L KVCaches, ``logits`` not "all" or "last", ``logits="last"``
  with targets, ``backward`` of a forward that had no targets, a second
  ``backward`` of one forward's cache;
- DTypeError: ``params`` not a float32/float64 ndarray, ``ids`` or ``targets``
  not int32/int64, KV cache buffers not in the params' dtype, ``backward``
  with params of another dtype than the forward;
- ShapeError: ``params`` not (P,), ``ids`` not (B, T), ``targets`` not ids'
  shape, ``pos_offset + T > T_max``, a KV cache whose length is not
  ``pos_offset`` or whose buffers are not (B, NH, T_max, HS);
- EmptyInputError: B = 0 or T = 0;
- IdRangeError: an id outside [0, V), a target outside [0, V) that is not -100;
- NonFiniteError: NaN or inf in ``params`` (not scanned again when they come
  as the CheckedParams of :func:`checked_params`);
- Unsupported: ``params.dtype`` not among ``backend.dtypes``; ``backward`` of a
  forward that attended to positions cached by earlier calls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from cllm_spec import checks
from cllm_spec.attention import validate_kv_cache_for
from cllm_spec.errors import ConfigError, DTypeError, ShapeError, Unsupported
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
from cllm_spec.protocols import (
    CrossEntropyCache,
    EmbeddingCache,
    FFNCache,
    KVCache,
    LayerNormCache,
    LinearCache,
    MHACache,
)

LN_EPS = 1e-5
IGNORE_INDEX = -100
LOGITS = ("all", "last")  # the positions forward computes logits for


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


# ----------------------------------------------------------------- caches -----
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
    spent: list[bool]  # [True] once a backward consumed it (docstring, "Loss")


def init_kv_caches(
    backend: Any, cfg: ModelConfig, batch: int, dtype: Any
) -> tuple[KVCache, ...]:
    """L empty KV caches of T_max positions for ``batch`` sequences."""
    return tuple(
        backend.kv_cache_new(batch, cfg.n_head, cfg.block_size, cfg.head_size, dtype)
        for _ in range(cfg.n_layer)
    )


# ---------------------------------------------------------------- forward -----
class CheckedParams(NamedTuple):
    """A params buffer that :func:`checked_params` found finite, for one config.

    :func:`forward` and :func:`backward` accept it in place of the array and
    skip the scan for NaN and inf (the other checks are cheap and stay), so a
    caller that runs many forwards on one buffer pays for the scan once: the
    trainer checks once per step for the step's 12 groups. The holder must not
    change the buffer while it passes this on.
    """

    flat: np.ndarray  # (P,)
    cfg: ModelConfig


def checked_params(backend: Any, cfg: ModelConfig, params: object) -> CheckedParams:
    """``params`` validated in full (see :func:`validate_params`), marked so."""
    return CheckedParams(validate_params(backend, cfg, params), cfg)


def validate_params(backend: Any, cfg: ModelConfig, params: object) -> np.ndarray:
    """``params`` is the finite (P,) buffer of ``cfg`` in a dtype of ``backend``;
    returns the buffer. A :class:`CheckedParams` of ``cfg`` skips the finite scan.
    """
    if not isinstance(cfg, ModelConfig):
        raise ConfigError(f"cfg: expected a ModelConfig, got {type(cfg).__name__}")
    known_finite = isinstance(params, CheckedParams)
    if isinstance(params, CheckedParams):
        if params.cfg != cfg:
            raise ConfigError("params: checked for another model config")
        params = params.flat
    flat = checks.expect_float("params", params)
    checks.expect_shape("params", flat, (param_layout(cfg).size,))  # cached per cfg
    if flat.dtype not in tuple(np.dtype(d) for d in backend.dtypes):
        raise Unsupported(f"backend {backend.name!r} does not compute in {flat.dtype}")
    if not known_finite:
        checks.expect_finite("params", flat, getattr(backend, "all_finite", None))
    return flat


def validate_forward(
    backend: Any,
    cfg: ModelConfig,
    params: object,
    ids: object,
    targets: object,
    kv_caches: object,
    pos_offset: object,
    logits: object = "all",
    loss_reduction: object = "mean",
) -> np.ndarray:
    """The checks of :func:`forward` (see "Errors" in the module docstring);
    returns the params buffer."""
    offset = checks.expect_nonnegative_int("pos_offset", pos_offset)
    checks.expect_choice("logits", logits, LOGITS)
    checks.expect_choice("loss_reduction", loss_reduction, ("mean", "sum"))
    if logits == "last" and targets is not None:
        raise ConfigError(
            'logits="last" computes no loss: the loss needs every position',
            hint='pass logits="all" with targets',
        )
    flat = validate_params(backend, cfg, params)
    tokens = checks.expect_int("ids", ids)
    checks.expect_rank("ids", tokens, 2)
    checks.expect_nonempty("ids", tokens)
    t = tokens.shape[1]
    if offset + t > cfg.block_size:
        raise ShapeError(
            f"positions [{offset}, {offset + t}) exceed block_size={cfg.block_size}",
            hint="crop the context to the last block_size tokens",
        )
    checks.expect_ids("ids", tokens, cfg.vocab_size)
    if targets is not None:
        validate_targets(cfg, targets, tokens.shape)
    if kv_caches is not None:
        _validate_kv_caches(cfg, kv_caches, offset, tokens.shape, flat.dtype)
    return flat


def validate_targets(cfg: ModelConfig, targets: object, shape: tuple[int, ...]) -> None:
    """Targets of ids of ``shape``: ints in ``[0, V)`` or ``IGNORE_INDEX``."""
    y = checks.expect_int("targets", targets)
    checks.expect_shape("targets", y, shape)
    checks.expect_ids("targets", y, cfg.vocab_size, ignore_index=IGNORE_INDEX)


def _validate_kv_caches(
    cfg: ModelConfig,
    kv_caches: object,
    offset: int,
    ids_shape: tuple[int, ...],
    dtype: np.dtype[Any],
) -> None:
    if not isinstance(kv_caches, Sequence) or len(kv_caches) != cfg.n_layer:
        raise ConfigError(
            f"kv_caches: expected a sequence of n_layer={cfg.n_layer} KVCaches"
        )
    for i, kv in enumerate(kv_caches):
        if not isinstance(kv, KVCache):
            raise ConfigError(
                f"kv_caches[{i}]: expected a KVCache, got {type(kv).__name__}"
            )
        if kv.length != offset:
            raise ShapeError(
                f"kv_caches[{i}] holds {kv.length} positions but pos_offset={offset}",
                hint="pass pos_offset equal to the number of tokens already cached",
            )
        # the model kernels skip their own checks: those of the buffers happen
        # here, once per decoding step, so the common case is one expression
        # and the spec's validator (which names what is wrong) runs otherwise
        b, t = ids_shape
        if not _kv_fits(kv, dtype, (b, cfg.n_head, cfg.head_size), t):
            validate_kv_cache_for(kv, dtype, (b, cfg.n_head, cfg.head_size), t)


def _kv_fits(
    kv: KVCache, dtype: np.dtype[Any], bnh_hs: tuple[int, ...], t: int
) -> bool:
    """Whether ``kv`` plainly passes ``validate_kv_cache_for`` (a fast path)."""
    k, v = kv.k, kv.v
    return (
        type(k) is np.ndarray
        and type(v) is np.ndarray
        and type(kv.length) is int
        and k.dtype == dtype
        and v.dtype == dtype
        and k.ndim == 4
        and k.shape == v.shape
        and (k.shape[0], k.shape[1], k.shape[3]) == bnh_hs
        and 0 <= kv.length <= k.shape[2] - t
    )


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
def validate_backward(
    backend: Any, cfg: ModelConfig, params: object, cache: object
) -> np.ndarray:
    """The checks of :func:`backward`: a cache of a forward with targets, not
    yet consumed by a backward; returns the params buffer."""
    flat = validate_params(backend, cfg, params)
    if not isinstance(cache, ModelCache):
        raise ConfigError(f"cache: expected a ModelCache, got {type(cache).__name__}")
    if cache.spent[0]:
        raise ConfigError(
            "backward: this forward's cache was already used by a backward",
            hint="run forward again: a backward consumes its forward's cache "
            '(cllm_spec/model.py, "Loss")',
        )
    if len(cache.blocks) != cfg.n_layer:
        raise ShapeError(
            f"cache has {len(cache.blocks)} blocks, the config {cfg.n_layer}"
        )
    if cache.loss is None:
        raise ConfigError(
            "backward: the forward ran without targets, so there is no loss",
            hint="pass targets to forward",
        )
    if cache.dtype != flat.dtype:
        raise DTypeError(
            f"params are {flat.dtype} but the forward ran in {cache.dtype}"
        )
    attn = cache.blocks[0].attn.attn  # every block attended to the same positions
    if attn.k.shape[2] != attn.q.shape[2]:
        raise Unsupported(
            f"backward after a KV-cache forward that attended to "
            f"{attn.k.shape[2] - attn.q.shape[2]} earlier cached positions: "
            "training never uses the KV cache",
            hint="run the training forward without kv_caches",
        )
    return flat


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
