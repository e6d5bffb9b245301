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

Each forward of the decoder computes the LM head for the last position only
(``forward(..., logits="last")``): a prefill of T tokens samples from one row,
so it multiplies the V x C head by one row, not by T. The params are checked
once per decoder, not once per token (``checked_params``). Every step, the
prefill included, goes through :func:`decode_last`: one call of the backend's
fused ``model_kernels.decode_last`` when it has one (the C backend's runs the
whole model in one C call), else :func:`~cllm_spec.model.forward`. The
generation loop's steps check nothing again: the sampling was checked once
per call (:func:`~cllm_spec.sampling.draw` checks only the logits) and a
sampled token goes to :meth:`Decoder.feed_next`, which runs the backend's
``model_kernels.decode_session`` over the decoder's own caches when it has one.
Per token, a small model's checks cost as much as its arithmetic, and after a
large model's step has streamed its weights through the CPU's caches, every
Python operation misses them: the same Python of a step took ~300 us per
token on the production model against ~25 us on the default one.

Batches
=======

``generate_batch`` decodes B prompts of one length together (B samples of one
prompt, for example): every decoding step is one forward over B rows, so each
weight is read once for all of them. Row b stops at its own ``eos_id``; each
step draws B doubles (``sample`` on ``(B, V)``), so with B = 1 it is
``generate`` exactly, and with greedy sampling row b is ``generate`` of
prompt b (up to the rounding of a batched forward).

Errors (checked before the model runs)
======================================
- ConfigError: ``cfg`` not a ModelConfig; ``max_new_tokens`` not an int >= 0;
  ``sampling`` not a SamplingConfig or its ``top_k`` > V; ``rng`` not a
  ``numpy.random.Generator``; ``eos_id`` not None or an int (bools refused);
- DTypeError: ``params`` not float32/float64; ``prompt_ids`` not an int32/int64
  ndarray;
- ShapeError: ``params`` not (P,); ``prompt_ids`` not rank 1 (``generate``)
  or 2 (``generate_batch``); ``Decoder.feed`` ids not (T,) or (B, T), T >= 1;
- IdRangeError: a prompt id or ``eos_id`` outside [0, V);
- EmptyInputError: an empty prompt when V <= 2 (no ``<bos>``); B = 0 prompts;
- NonFiniteError: NaN or inf in ``params``;
- Unsupported: ``params.dtype`` not among ``backend.dtypes``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from cllm_spec import checks
from cllm_spec.data.tokenizers import BOS_ID
from cllm_spec.errors import (
    ConfigError,
    DTypeError,
    EmptyInputError,
    IdRangeError,
    ShapeError,
)
from cllm_spec.model import (
    CheckedParams,
    ModelConfig,
    checked_params,
    forward,
    init_kv_caches,
    validate_forward,
)
from cllm_spec.protocols import KVCache
from cllm_spec.sampling import SamplingConfig, draw, validate_top_k


# ------------------------------------------------------------------ validation ---
def validate_prompt(cfg: ModelConfig, prompt_ids: object, rank: int = 1) -> np.ndarray:
    """``prompt_ids: (T,) int32|int64`` (``(B, T)`` for rank 2, B >= 1) with ids
    in [0, V); T = 0 allowed."""
    ids = checks.expect_int("prompt_ids", prompt_ids)
    checks.expect_rank("prompt_ids", ids, rank)
    if rank == 2 and ids.shape[0] == 0:
        raise EmptyInputError("prompt_ids: no prompt (B = 0)")
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
    rank: int = 1,
) -> tuple[CheckedParams, np.ndarray, int, int | None]:
    """The checks of :func:`generate` (``rank=2``: of :func:`generate_batch`);
    returns (the params as checked, prompt as int64, max_new_tokens, eos_id).

    The checked params carry the one O(P) finite scan of the call into its
    :class:`Decoder`: on a production model that scan costs as much as the
    prompt's forward.
    """
    if not isinstance(cfg, ModelConfig):
        raise ConfigError(f"cfg: expected a ModelConfig, got {type(cfg).__name__}")
    checked = checked_params(backend, cfg, params)
    ids = validate_prompt(cfg, prompt_ids, rank).astype(np.int64, copy=False)
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
    return checked, ids, n, validate_eos_id(cfg, eos_id)


# ------------------------------------------------------------------- decoding ---
class Decoder:
    """The KV-cached contexts of ``batch`` sequences decoded in step.

    ``feed(ids)`` appends ``ids: (T,)`` (batch 1) or ``(B, T)`` to the
    contexts and returns the logits of the token that follows each, ``(V,)``
    or ``(B, V)``, computed from the last ``min(n, T_max)`` tokens (module
    docstring, "KV caches"). Every sequence holds the same number of tokens
    (B samples of one prompt, or prompts of one length). The caches belong to
    the decoder: the backend appends into their preallocated buffers.

    The params are validated once, here, as the CheckedParams of
    :func:`~cllm_spec.model.checked_params`: each step runs the model's
    forward on them with ``logits="last"`` (the LM head for the sampled
    position only), so a step costs the model's arithmetic and no O(P) scan
    of the weights.
    """

    def __init__(
        self,
        backend: Any,
        cfg: ModelConfig,
        params: np.ndarray | CheckedParams,
        batch: int = 1,
    ) -> None:
        self.backend = backend
        self.cfg = cfg
        self.params = checked_params(backend, cfg, params)
        self.batch = checks.expect_positive_int("batch", batch)
        self._caches: tuple[KVCache, ...] = init_kv_caches(
            backend, cfg, self.batch, self.params.flat.dtype
        )
        # the tokens in the caches, oldest first: (B, T_max), n of them valid
        self._tokens = np.zeros((self.batch, cfg.block_size), dtype=np.int64)
        self._n = 0
        self._session = self._open_session()

    @property
    def context(self) -> np.ndarray:
        """The tokens the caches hold, oldest first: (n,) int64 for batch 1,
        else (B, n); n <= T_max."""
        held = self._tokens[:, : self._n].copy()
        return held[0] if self.batch == 1 else held

    def feed(self, ids: np.ndarray) -> np.ndarray:
        """Append ``ids: (T,) or (B, T) int`` (T >= 1); the next-token logits
        ``(V,)`` or ``(B, V)``."""
        rows = np.asarray(ids)
        if rows.size and rows.dtype.kind not in "iu":  # a cast would truncate
            raise DTypeError(f"ids: expected integer token ids, got {rows.dtype}")
        rows = rows.astype(np.int64, copy=False)
        single = rows.ndim == 1
        rows = rows.reshape(1, -1) if single else rows
        if rows.ndim != 2 or rows.shape[0] != self.batch or rows.shape[1] == 0:
            raise ShapeError(
                f"ids: expected (T,) or ({self.batch}, T) with T >= 1, "
                f"got {np.shape(ids)}"
            )
        n, t, t_max = self._n, rows.shape[1], self.cfg.block_size
        if n + t <= t_max:
            logits = self._run(rows, n)
        else:
            # the window slides: every position changes, so refill from scratch
            window = np.concatenate([self._tokens[:, :n], rows], axis=1)[:, -t_max:]
            self._caches = tuple(self.backend.kv_cache_reset(kv) for kv in self.caches)
            self._session = self._open_session()
            self._n = 0
            logits = self._run(window, 0)
        return logits[0] if single else logits

    def feed_next(self, toks: np.ndarray) -> np.ndarray:
        """:meth:`feed` of ``toks: (B,) int64``, the next token of each
        sequence, chosen from this decoder's logits (sampled, or a beam's
        pick); the logits ``(B, V)``.

        Such a step has nothing to check again: the params were checked once
        and the caches are the decoder's own. Where the backend offers
        ``model_kernels.decode_session`` the step goes straight to it (per
        token, a small model's checks cost about as much as its arithmetic;
        an id outside [0, V) is still the backend's IdRangeError); otherwise,
        when the window slides, or for any other ``toks``, it is :meth:`feed`.
        """
        n = self._n
        plain = type(toks) is np.ndarray and toks.dtype == np.int64
        if not plain or toks.shape != (self.batch,):
            return self.feed(np.asarray(toks)[..., None])  # which names the error
        if self._session is None or n == self.cfg.block_size:
            return self.feed(toks[:, None])
        logits = self._session(toks[:, None], n)  # (B, 1, V)
        if logits is None:
            return self.feed(toks[:, None])
        self._tokens[:, n] = toks
        self._n = n + 1  # the caches' lengths follow when asked (caches)
        last: np.ndarray = logits[:, 0]  # (B, V), a view
        return last

    @property
    def caches(self) -> tuple[KVCache, ...]:
        """The decoder's KV caches, one per layer, holding the context's
        positions [0, n).

        Built when asked, not after every step: a session step appends into
        the same buffers, and a tuple of L new caches per token cost ~30 us
        on a large model, whose step leaves Python's data out of the caches.
        """
        if self._caches[0].length != self._n:
            self._caches = tuple(KVCache(kv.k, kv.v, self._n) for kv in self._caches)
        return self._caches

    def _open_session(self) -> Any:
        """The backend's prepared decoding step over these caches, or None."""
        kernels = getattr(self.backend, "model_kernels", None)
        opener = getattr(kernels, "decode_session", None)
        if opener is None:
            return None
        return opener(self.cfg, self.params.flat, self._caches)

    def reorder(self, rows: np.ndarray) -> None:
        """Make sequence i the former sequence ``rows[i]`` (its cached keys and
        values and its tokens), for ``rows: (B,)`` ints in [0, B).

        Beam search keeps the best continuations, which may share a parent or
        drop one; this copies each layer's cache rows once per call.
        """
        index = np.asarray(rows, dtype=np.int64)
        if index.shape != (self.batch,) or index.min() < 0 or index.max() >= self.batch:
            raise ShapeError(
                f"rows: expected ({self.batch},) ints in [0, {self.batch}), "
                f"got {np.shape(rows)}"
            )
        for kv in self._caches:
            kv.k[...] = kv.k[index]  # (B, NH, T_max, HS): fancy indexing copies
            kv.v[...] = kv.v[index]
        self._tokens[...] = self._tokens[index]

    def _run(self, rows: np.ndarray, offset: int) -> np.ndarray:
        logits, self._caches = decode_last(
            self.backend, self.cfg, self.params, rows, self.caches, offset
        )  # (B, 1, V)
        t = rows.shape[1]
        self._tokens[:, offset : offset + t] = rows
        self._n = offset + t
        last: np.ndarray = logits[:, 0]  # (B, V), a view: no copy of the vocabulary
        return last


def decode_last(
    backend: Any,
    cfg: ModelConfig,
    params: np.ndarray | CheckedParams,
    ids: np.ndarray,
    kv_caches: tuple[KVCache, ...],
    pos_offset: int,
) -> tuple[np.ndarray, tuple[KVCache, ...]]:
    """``forward(backend, cfg, params, ids, kv_caches=kv_caches,
    pos_offset=pos_offset, logits="last")``: the logits ``(B, 1, V)`` and the
    appended caches, with the same checks; through the backend's fused
    ``model_kernels.decode_last`` when it has one and it applies."""
    flat = validate_forward(
        backend, cfg, params, ids, None, kv_caches, pos_offset, "last"
    )
    fused = getattr(getattr(backend, "model_kernels", None), "decode_last", None)
    if fused is not None:
        tokens = np.asarray(ids)
        logits = fused(cfg, flat, tokens, kv_caches, pos_offset)
        if logits is not None:
            end = pos_offset + tokens.shape[1]
            return logits, tuple(KVCache(kv.k, kv.v, end) for kv in kv_caches)
    out, _, cache = forward(
        backend, cfg, CheckedParams(flat, cfg), ids, kv_caches=kv_caches,
        pos_offset=pos_offset, logits="last",
    )  # fmt: skip
    assert cache.kv_caches is not None  # forward ran with caches
    return out, cache.kv_caches


def generate(
    backend: Any,
    model_cfg: ModelConfig,
    params: np.ndarray | CheckedParams,
    prompt_ids: np.ndarray,
    max_new_tokens: int,
    sampling: SamplingConfig,
    rng: np.random.Generator,
    eos_id: int | None,
) -> np.ndarray:
    """The new token ids ``(N,) int64`` that follow ``prompt_ids`` (module doc)."""
    checked, prompt, n, eos = validate_generate(
        backend, model_cfg, params, prompt_ids, max_new_tokens, sampling, rng, eos_id
    )
    return _generate(
        backend, model_cfg, checked, prompt[None, :], n, sampling, rng, eos
    )[0]


def generate_batch(
    backend: Any,
    model_cfg: ModelConfig,
    params: np.ndarray | CheckedParams,
    prompt_ids: np.ndarray,
    max_new_tokens: int,
    sampling: SamplingConfig,
    rng: np.random.Generator,
    eos_id: int | None,
) -> list[np.ndarray]:
    """:func:`generate` for B prompts of one length ``prompt_ids: (B, T)`` at once.

    Returns B arrays of new ids (each ``(N_b,) int64``, N_b <= max_new_tokens).
    The B sequences share every forward (one decoding step computes B rows, so
    each weight is read once for all of them). Sampling draws one double per
    row per step (``sample`` on ``(B, V)``) until every row has stopped; a row
    stops at its first ``eos_id``, which it does not return, and the others go
    on. With greedy sampling row b equals ``generate`` of prompt b; with B = 1,
    ``generate_batch(p[None])[0]`` equals ``generate(p)`` for every sampling
    and seed. Errors as :func:`generate`, with ``prompt_ids`` of rank 2.
    """
    checked, prompts, n, eos = validate_generate(
        backend, model_cfg, params, prompt_ids, max_new_tokens, sampling, rng, eos_id,
        rank=2,
    )  # fmt: skip
    return _generate(backend, model_cfg, checked, prompts, n, sampling, rng, eos)


def _generate(
    backend: Any,
    cfg: ModelConfig,
    params: CheckedParams,
    prompts: np.ndarray,
    n: int,
    sampling: SamplingConfig,
    rng: np.random.Generator,
    eos: int | None,
) -> list[np.ndarray]:
    """The decoding loop of validated ``prompts: (B, T)``: the kept tokens."""
    kept: list[list[int]] = [[] for _ in range(prompts.shape[0])]
    for toks, live in _steps(backend, cfg, params, prompts, n, sampling, rng, eos):
        for row in np.flatnonzero(live):
            kept[row].append(int(toks[row]))
    return [np.asarray(row, dtype=np.int64) for row in kept]


def generate_stream(
    backend: Any,
    model_cfg: ModelConfig,
    params: np.ndarray | CheckedParams,
    prompt_ids: np.ndarray,
    max_new_tokens: int,
    sampling: SamplingConfig,
    rng: np.random.Generator,
    eos_id: int | None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """:func:`generate_batch` one step at a time, for printing as it goes.

    Yields ``(tokens, live)`` per decoding step, both ``(B,)``: row b's new
    token is ``tokens[b]`` where ``live[b]``; a row that has stopped (at its
    ``eos_id``) is not live again. The live tokens, in order, are exactly what
    :func:`generate_batch` returns for the same arguments and generator.
    Validation happens before the first step (so errors raise at the first
    ``next``); closing the iterator early stops the decoding there.
    """
    checked, prompts, n, eos = validate_generate(
        backend, model_cfg, params, prompt_ids, max_new_tokens, sampling, rng, eos_id,
        rank=2,
    )  # fmt: skip
    yield from _steps(backend, model_cfg, checked, prompts, n, sampling, rng, eos)


def _steps(
    backend: Any,
    cfg: ModelConfig,
    params: CheckedParams,
    prompts: np.ndarray,
    n: int,
    sampling: SamplingConfig,
    rng: np.random.Generator,
    eos: int | None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(tokens (B,), live (B,))`` per step of validated ``prompts: (B, T)``.

    Nothing is preallocated for the n steps: n bounds the loop, not memory.
    """
    if n == 0:
        return
    b = prompts.shape[0]
    if prompts.shape[1] == 0:
        prompts = np.full((b, 1), BOS_ID, dtype=np.int64)
    decoder = Decoder(backend, cfg, params, batch=b)
    # only the last T_max tokens can be seen; cropping first spares the copy
    logits = decoder.feed(prompts[:, -cfg.block_size :])  # (B, V)
    live = np.ones(b, dtype=bool)  # rows that have not sampled eos
    for step in range(n):
        toks = draw(logits, sampling, rng)  # (B,) sampling was checked once
        if eos is not None:  # else every row stays live
            live &= toks != eos
            if not live.any():
                return
        yield toks, live.copy()
        if step + 1 == n:
            return
        logits = decoder.feed_next(toks)


__all__ = [
    "Decoder",
    "generate",
    "generate_batch",
    "generate_stream",
    "validate_eos_id",
    "validate_generate",
    "validate_prompt",
]
