"""The checks of the GPT model's arguments (:mod:`cllm_spec.model`): those of
:func:`~cllm_spec.model.forward` (params, ids, targets, every KV cache's
buffers and room) and of :func:`~cllm_spec.model.backward` (its cache), which
run before any kernel does, and :class:`CheckedParams`, a params buffer
checked once for many calls. Shape letters as there: B batch, T tokens, V
vocabulary size, L = n_layer, NH = n_head, HS = C / NH, T_max = block_size,
P parameter count.

Checked params
==============

A caller that runs many forwards (and backwards) over one params buffer passes
the :class:`CheckedParams` of :func:`checked_params`: the O(P) scan for NaN and
inf then runs once, not once per call (the trainer checks once per step for
its 12 groups, the decoder of :mod:`cllm_spec.generate` once per generation,
not once per token). The other checks are cheap and stay.

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

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from cllm_spec import checks
from cllm_spec.attention import validate_kv_cache_for
from cllm_spec.errors import ConfigError, DTypeError, ShapeError, Unsupported
from cllm_spec.model_caches import ModelCache
from cllm_spec.model_params import ModelConfig, param_layout
from cllm_spec.protocols import KVCache

IGNORE_INDEX = -100  # the target of a position the loss skips
LOGITS = ("all", "last")  # the positions forward computes logits for


class CheckedParams(NamedTuple):
    """A params buffer that :func:`checked_params` found finite, for one config.

    :func:`~cllm_spec.model.forward` and :func:`~cllm_spec.model.backward`
    accept it in place of the array and skip the scan for NaN and inf (the
    other checks are cheap and stay), so a caller that runs many forwards on
    one buffer pays for the scan once: the trainer checks once per step for the
    step's 12 groups. The holder must not change the buffer while it passes
    this on.
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
    """The checks of :func:`~cllm_spec.model.forward` (see "Errors" in the
    module docstring); returns the params buffer."""
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


def validate_backward(
    backend: Any, cfg: ModelConfig, params: object, cache: object
) -> np.ndarray:
    """The checks of :func:`~cllm_spec.model.backward`: a cache of a forward
    with targets, not yet consumed by a backward; returns the params buffer."""
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


__all__ = [
    "IGNORE_INDEX",
    "LOGITS",
    "CheckedParams",
    "checked_params",
    "validate_backward",
    "validate_forward",
    "validate_params",
    "validate_targets",
]
