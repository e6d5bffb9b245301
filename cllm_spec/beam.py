"""Beam search: the likeliest continuations under the model, not samples.

Shape letters: K beams, V vocabulary size, N = ``max_new_tokens``.

Semantics
=========

A hypothesis is a continuation ``y_1 .. y_m`` of the prompt; its score is its
log-probability under the model (no length penalty)::

    score(y) = sum_{i=1..m} log p(y_i | prompt, y_1 .. y_{i-1})

computed in float64 from each step's logits (``log_softmax``). A hypothesis is
*finished* when its last token is ``eos_id`` (the eos term is in its score and
the token is not returned) or when it has N tokens.

``beam_search`` keeps the K best unfinished hypotheses after every step: each
is extended by every token of the vocabulary, and of those K * V candidates
(V at the first step, where there is one hypothesis) the K highest scores go
on; a candidate that ends in ``eos_id`` is set aside as finished. It stops
after N steps, or earlier once no unfinished hypothesis can beat the K-th best
finished one (scores only fall as tokens are added, since every term is a
log-probability <= 0). It returns the K best finished hypotheses, best first,
ties broken by the order of discovery (lower token ids first).

With ``K >= V^(N-1)`` no prefix is ever dropped, so the result is the exact top
K of all continuations (the test compares it with exhaustive search on a tiny
vocabulary); with ``K = 1`` it is greedy decoding. The K hypotheses share each
forward of the model (a batch of K rows through :class:`Decoder`), and the KV
caches follow their parents (:meth:`Decoder.reorder`).

Errors: those of :func:`cllm_spec.generate.generate` for the model, prompt,
``max_new_tokens`` and ``eos_id``; ``beams`` not an int in [1, 1024] is a
ConfigError.
"""

from __future__ import annotations

import heapq
from typing import Any, NamedTuple

import numpy as np

from cllm_spec import checks
from cllm_spec.data.tokenizers import BOS_ID
from cllm_spec.errors import ConfigError
from cllm_spec.generate import Decoder, validate_generate
from cllm_spec.model import CheckedParams, ModelConfig
from cllm_spec.sampling import SamplingConfig

MAX_BEAMS = 1024


class Hypothesis(NamedTuple):
    ids: np.ndarray  # (m,) int64, the new tokens (eos not included)
    score: float  # the log-probability of the tokens (and of eos, if it ended so)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """Rows of ``logits: (K, V)`` as float64 log-probabilities."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    out: np.ndarray = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return out


def beam_search(
    backend: Any,
    model_cfg: ModelConfig,
    params: np.ndarray | CheckedParams,
    prompt_ids: np.ndarray,
    max_new_tokens: int,
    beams: int,
    eos_id: int | None,
) -> list[Hypothesis]:
    """The ``beams`` best continuations of ``prompt_ids: (T,)``, best first."""
    k = checks.expect_positive_int("beams", beams)
    if k > MAX_BEAMS:
        raise ConfigError(f"beams: expected at most {MAX_BEAMS}, got {k}")
    checked, prompt, n, eos = validate_generate(
        backend,
        model_cfg,
        params,
        prompt_ids,
        max_new_tokens,
        SamplingConfig(greedy=True),
        np.random.default_rng(0),  # unused: beam search draws nothing
        eos_id,
    )
    if n == 0:
        return [Hypothesis(np.zeros(0, dtype=np.int64), 0.0)]
    if prompt.size == 0:
        prompt = np.array([BOS_ID], dtype=np.int64)
    decoder = Decoder(backend, model_cfg, checked, batch=k)
    window = prompt[-model_cfg.block_size :]
    logp = _log_softmax(decoder.feed(np.tile(window, (k, 1))))  # (K, V), equal rows
    scores = np.zeros(1)  # one live hypothesis at the start
    seqs = np.zeros((1, 0), dtype=np.int64)
    finished: list[tuple[float, int, np.ndarray]] = []  # (-score, order, ids)
    order = 0
    for step in range(n):
        live = scores.size
        total = (scores[:, None] + logp[:live]).ravel()  # (live * V,)
        # the best candidates, in order; stable so ties keep lower ids first
        ranked = np.argsort(-total, kind="stable")
        keep_rows, keep_toks, keep_scores = [], [], []
        for flat in ranked:
            parent, tok = divmod(int(flat), logp.shape[1])
            score = float(total[flat])
            if eos is not None and tok == eos:
                heapq.heappush(finished, (-score, order, seqs[parent].copy()))
                order += 1
            else:
                keep_rows.append(parent)
                keep_toks.append(tok)
                keep_scores.append(score)
            if len(keep_rows) == k:
                break
        seqs = np.concatenate(
            [seqs[keep_rows], np.asarray(keep_toks, dtype=np.int64)[:, None]], axis=1
        )
        scores = np.asarray(keep_scores)
        best = sorted(finished)[:k]
        if len(best) == k and (scores.size == 0 or scores.max() <= -best[-1][0]):
            break  # no live hypothesis can beat the k-th finished one
        if step + 1 == n or scores.size == 0:
            break
        rows = np.zeros(k, dtype=np.int64)
        rows[: len(keep_rows)] = keep_rows
        decoder.reorder(rows)
        toks = np.zeros(k, dtype=np.int64)
        toks[: len(keep_toks)] = keep_toks
        logp = _log_softmax(decoder.feed_next(toks))
    for i in range(scores.size):  # hypotheses that reached N tokens
        heapq.heappush(finished, (-float(scores[i]), order, seqs[i]))
        order += 1
    return [Hypothesis(ids, -neg) for neg, _, ids in sorted(finished)[:k]]


__all__ = ["MAX_BEAMS", "Hypothesis", "beam_search"]
