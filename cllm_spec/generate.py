"""Autoregressive generation through the model's own forward, with KV caches.

Shape letters: T prompt length, N new tokens, V vocabulary size, T_max =
``cfg.block_size``.

Semantics
=========

``generate(backend, cfg, params, prompt_ids, max_new_tokens, sampling, rng,
eos_id) -> new_ids: (N,) int64`` with ``0 <= N <= max_new_tokens`` computes
exactly what nanoGPT's ``generate`` does, token by token::

    seq = prompt_ids                    (or [<bos>] = [2] when the prompt is empty)
    repeat max_new_tokens times:
        ctx    = seq[-T_max:]           the last min(len(seq), T_max) tokens
        logits = forward(ctx)[-1]       (V,) the next-token logits of the real model
        tok    = sample(logits, sampling, rng)
        if tok == eos_id: stop          <eos> is neither returned nor appended
        seq    = seq + [tok]
    return the appended tokens

So every prediction comes from one forward of the model over its context (the
original project filled the logits with random numbers, or ran a one-token
model with no context at all), and a fixed seed gives a fixed sequence:
``sample`` draws exactly one double from ``rng`` per token (none when greedy).

- Empty prompt: generation starts from ``<bos>`` (id 2, the same id in every
  tokenizer of :mod:`cllm_spec.data.tokenizers`). ``<bos>`` is context, not
  output. A vocabulary of V <= 2 has no ``<bos>``: EmptyInputError.
- A prompt longer than T_max: only its last T_max tokens are seen (the position
  table has T_max rows).
- ``eos_id``: None never stops early; otherwise the first sampled ``eos_id``
  ends generation and is dropped, so the result never contains it.
- ``max_new_tokens = 0`` returns an empty array without running the model.

KV caches
=========

The cached computation (:class:`Decoder`) gives the logits of the definition
above up to floating-point rounding (``forward`` over chunks equals one full
forward, :mod:`cllm_spec.model`):

1. prefill: one forward over the whole (cropped) prompt into empty caches;
2. decode: one forward per new token at ``pos_offset`` = the number of cached
   positions, appending its key and value;
3. sliding window: when the caches hold T_max positions and a token arrives,
   the caches are reset and refilled with one forward over the last T_max
   tokens (the T_max - 1 newest cached ones plus the new one), positions
   0 .. T_max - 1. Learned absolute positions are why no cached key survives
   a shift of the window: every key depends on its position embedding. Past
   T_max, each token therefore costs a forward over T_max positions, the same
   work as nanoGPT's uncached crop ``idx[:, -block_size:]``.

Errors (checked before the model runs)
======================================
- ConfigError: ``cfg`` not a ModelConfig; ``max_new_tokens`` not an int >= 0;
  ``sampling`` not a SamplingConfig or its ``top_k`` > V; ``rng`` not a
  ``numpy.random.Generator``; ``eos_id`` not None or an int (bools refused);
- DTypeError: ``params`` not float32/float64; ``prompt_ids`` not an int32/int64
  ndarray;
- ShapeError: ``params`` not (P,); ``prompt_ids`` not rank 1;
- IdRangeError: a prompt id or ``eos_id`` outside [0, V);
- EmptyInputError: an empty prompt when V <= 2 (no ``<bos>``);
- NonFiniteError: NaN or inf in ``params``;
- Unsupported: ``params.dtype`` not among ``backend.dtypes``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cllm_spec import checks
from cllm_spec.data.tokenizers import BOS_ID
from cllm_spec.errors import ConfigError, EmptyInputError, IdRangeError
from cllm_spec.model import ModelConfig, forward, init_kv_caches, validate_params
from cllm_spec.protocols import KVCache
from cllm_spec.sampling import SamplingConfig, sample, validate_top_k


# ------------------------------------------------------------------ validation ---
def validate_prompt(cfg: ModelConfig, prompt_ids: object) -> np.ndarray:
    """``prompt_ids: (T,) int32|int64`` with ids in [0, V); T = 0 allowed."""
    ids = checks.expect_int("prompt_ids", prompt_ids)
    checks.expect_rank("prompt_ids", ids, 1)
    checks.expect_ids("prompt_ids", ids, cfg.vocab_size)
    if ids.size == 0 and cfg.vocab_size <= BOS_ID:
        raise EmptyInputError(
            f"prompt_ids: empty, and V={cfg.vocab_size} has no <bos> (id {BOS_ID}) "
            "to start from",
            hint="pass at least one prompt token",
        )
    return ids


def validate_eos_id(cfg: ModelConfig, eos_id: object) -> int | None:
    """``eos_id`` is None or an id in [0, V)."""
    if eos_id is None:
        return None
    eos = checks.expect_int_scalar("eos_id", eos_id)
    if not 0 <= eos < cfg.vocab_size:
        raise IdRangeError(
            f"eos_id: expected an id in [0, {cfg.vocab_size}), got {eos}"
        )
    return eos


def validate_generate(
    backend: Any,
    cfg: object,
    params: object,
    prompt_ids: object,
    max_new_tokens: object,
    sampling: object,
    rng: object,
    eos_id: object,
) -> tuple[np.ndarray, int, int | None]:
    """The checks of :func:`generate`; returns (prompt, max_new_tokens, eos_id)."""
    if not isinstance(cfg, ModelConfig):
        raise ConfigError(f"cfg: expected a ModelConfig, got {type(cfg).__name__}")
    validate_params(backend, cfg, params)
    ids = validate_prompt(cfg, prompt_ids)
    n = checks.expect_nonnegative_int("max_new_tokens", max_new_tokens)
    if not isinstance(sampling, SamplingConfig):
        raise ConfigError(
            f"sampling: expected a SamplingConfig, got {type(sampling).__name__}"
        )
    validate_top_k(sampling.top_k, cfg.vocab_size)
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(
            f"rng: expected a numpy.random.Generator, got {type(rng).__name__}",
            hint="pass np.random.default_rng(seed)",
        )
    return ids, n, validate_eos_id(cfg, eos_id)


# ------------------------------------------------------------------- decoding ---
class Decoder:
    """The KV-cached context of one sequence (batch 1) being decoded.

    ``feed(ids)`` appends tokens to the context and returns the logits ``(V,)``
    of the token that follows, computed from the last ``min(n, T_max)`` tokens
    (module docstring, "KV caches"). The caches belong to the decoder: the
    backend appends into their preallocated buffers.
    """

    def __init__(self, backend: Any, cfg: ModelConfig, params: np.ndarray) -> None:
        self.backend = backend
        self.cfg = cfg
        self.params = params
        self._caches: tuple[KVCache, ...] = init_kv_caches(
            backend, cfg, 1, params.dtype
        )
        self._context = np.zeros(0, dtype=np.int64)  # the tokens in the caches

    @property
    def context(self) -> np.ndarray:
        """The tokens the caches hold, oldest first: (n,) int64, n <= T_max."""
        return self._context.copy()

    def feed(self, ids: np.ndarray) -> np.ndarray:
        """Append ``ids: (T,) int`` (T >= 1); the next-token logits (V,)."""
        ids = np.asarray(ids, dtype=np.int64)
        cached = self._context.size
        if cached + ids.size <= self.cfg.block_size:
            return self._run(ids, cached)
        # the window slides: every position changes, so refill from scratch
        window = np.concatenate([self._context, ids])[-self.cfg.block_size :]
        self._caches = tuple(self.backend.kv_cache_reset(kv) for kv in self._caches)
        self._context = np.zeros(0, dtype=np.int64)
        return self._run(window, 0)

    def _run(self, ids: np.ndarray, offset: int) -> np.ndarray:
        logits, _, cache = forward(
            self.backend,
            self.cfg,
            self.params,
            ids[None, :],  # (1, T)
            kv_caches=self._caches,
            pos_offset=offset,
        )  # (1, T, V)
        assert cache.kv_caches is not None  # forward ran with caches
        self._caches = cache.kv_caches
        self._context = np.concatenate([self._context, ids])
        last: np.ndarray = logits[0, -1]  # (V,)
        return last


def generate(
    backend: Any,
    model_cfg: ModelConfig,
    params: np.ndarray,
    prompt_ids: np.ndarray,
    max_new_tokens: int,
    sampling: SamplingConfig,
    rng: np.random.Generator,
    eos_id: int | None,
) -> np.ndarray:
    """The new token ids ``(N,) int64`` that follow ``prompt_ids`` (module doc)."""
    prompt, n, eos = validate_generate(
        backend, model_cfg, params, prompt_ids, max_new_tokens, sampling, rng, eos_id
    )
    out = np.zeros(n, dtype=np.int64)
    if n == 0:
        return out
    if prompt.size == 0:
        prompt = np.array([BOS_ID], dtype=np.int64)
    decoder = Decoder(backend, model_cfg, params)
    # only the last T_max tokens can be seen; cropping first spares the copy
    logits = decoder.feed(prompt[-model_cfg.block_size :])
    count = 0
    while True:
        tok = int(sample(logits, sampling, rng))
        if tok == eos:
            break
        out[count] = tok
        count += 1
        if count == n:
            break
        logits = decoder.feed(np.array([tok], dtype=np.int64))
    return out[:count]


__all__ = [
    "Decoder",
    "generate",
    "validate_eos_id",
    "validate_generate",
    "validate_prompt",
]
