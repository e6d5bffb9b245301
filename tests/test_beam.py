"""Beam search against exhaustive search on a tiny vocabulary."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cllm_spec.beam import beam_search
from cllm_spec.errors import ConfigError
from cllm_spec.generate import generate
from cllm_spec.model import ModelConfig, forward, init_params
from cllm_spec.registry import get_backend
from cllm_spec.sampling import SamplingConfig

CFG = ModelConfig(vocab_size=5, n_embd=8, n_layer=1, n_head=2, block_size=8)
PROMPT = np.array([3, 1], dtype=np.int64)
EOS = 4


@pytest.fixture(scope="module")
def params() -> np.ndarray:
    # large weights: peaked, distinct next-token distributions
    return init_params(CFG, np.random.default_rng(3), np.float64) * 40


def score(params: np.ndarray, tokens: list[int]) -> float:
    """log p(tokens | PROMPT) by one full forward (no caches, no beams)."""
    seq = np.concatenate([PROMPT, np.asarray(tokens, dtype=np.int64)])
    logits, _, _ = forward(get_backend("numpy"), CFG, params, seq[None, :-1])
    z = logits[0, PROMPT.size - 1 :]  # (len(tokens), V)
    logp = z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1))[:, None]
    logp -= z.max(1)[:, None]
    return float(sum(logp[i, t] for i, t in enumerate(tokens)))


def exhaustive(params: np.ndarray, n: int, eos: int | None) -> list[tuple[list, float]]:
    """Every finished continuation of at most n tokens with its score, best first."""
    words = [t for t in range(CFG.vocab_size) if t != eos]
    found = []
    for m in range(1, n + 1):
        for prefix in itertools.product(words, repeat=m - 1):
            if eos is not None:
                found.append((list(prefix), score(params, [*prefix, eos])))
            if m == n:
                found += [([*prefix, t], score(params, [*prefix, t])) for t in words]
    return sorted(found, key=lambda f: -f[1])


@pytest.mark.parametrize("backend_name", ["numpy", "c"])
@pytest.mark.parametrize("eos", [EOS, None])
def test_enough_beams_find_the_exact_top_k(params, backend_name, eos) -> None:
    n = 3
    words = CFG.vocab_size - (eos is not None)
    k = words ** (n - 1)  # no prefix is ever dropped
    truth = exhaustive(params, n, eos)[:k]
    got = beam_search(get_backend(backend_name), CFG, params, PROMPT, n, k, eos)
    assert len(got) == k
    np.testing.assert_allclose([h.score for h in got], [s for _, s in truth], atol=1e-9)
    # the same sequences (up to exact ties in score, which this model has none of)
    assert [h.ids.tolist() for h in got] == [ids for ids, _ in truth]


def test_one_beam_is_greedy(params) -> None:
    backend = get_backend("numpy")
    beam = beam_search(backend, CFG, params, PROMPT, 6, 1, EOS)[0]
    rng = np.random.default_rng(0)
    greedy = generate(
        backend, CFG, params, PROMPT, 6, SamplingConfig(greedy=True), rng, EOS
    )
    assert beam.ids.tolist() == greedy.tolist()


def test_few_beams_return_consistent_sorted_scores(params) -> None:
    got = beam_search(get_backend("numpy"), CFG, params, PROMPT, 5, 3, EOS)
    assert len(got) == 3
    assert [h.score for h in got] == sorted((h.score for h in got), reverse=True)
    for h in got:
        ended = len(h.ids) < 5
        full = [*h.ids.tolist(), EOS] if ended else h.ids.tolist()
        assert h.score == pytest.approx(score(params, full), abs=1e-9)
    greedy = beam_search(get_backend("numpy"), CFG, params, PROMPT, 5, 1, EOS)[0]
    assert got[0].score >= greedy.score - 1e-12


def test_beams_are_validated(params) -> None:
    backend = get_backend("numpy")
    for bad in (0, -1, 1025, 2.5, True):
        with pytest.raises(ConfigError, match="beams"):
            beam_search(backend, CFG, params, PROMPT, 3, bad, EOS)  # type: ignore[arg-type]
    assert beam_search(backend, CFG, params, PROMPT, 0, 2, EOS)[0].ids.size == 0
