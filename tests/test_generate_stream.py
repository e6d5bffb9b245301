"""generate_stream yields what generate_batch returns; Decoder.reorder."""

from __future__ import annotations

import numpy as np
import pytest

from cllm_spec.errors import ShapeError
from cllm_spec.generate import Decoder, generate_batch, generate_stream
from cllm_spec.model import ModelConfig, init_params
from cllm_spec.registry import get_backend
from cllm_spec.sampling import SamplingConfig

CFG = ModelConfig(vocab_size=11, n_embd=8, n_layer=1, n_head=2, block_size=6)


@pytest.fixture(scope="module")
def params() -> np.ndarray:
    return init_params(CFG, np.random.default_rng(1), np.float64) * 20


def test_stream_is_the_batch_step_by_step(params) -> None:
    backend = get_backend("numpy")
    prompts = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    args = (backend, CFG, params, prompts, 12, SamplingConfig())
    rows = generate_batch(*args, np.random.default_rng(9), 3)  # eos 3 stops rows
    kept: list[list[int]] = [[], [], []]
    for toks, live in generate_stream(*args, np.random.default_rng(9), 3):
        for r in np.flatnonzero(live):
            kept[r].append(int(toks[r]))
    assert [k for k in kept] == [r.tolist() for r in rows]
    assert any(len(r) < 12 for r in rows)  # eos really stopped some row


def test_stream_validates_before_the_first_step(params) -> None:
    stream = generate_stream(
        get_backend("numpy"),
        CFG,
        params,
        np.zeros(3, int),
        4,
        SamplingConfig(),
        np.random.default_rng(),
        None,
    )
    with pytest.raises(ShapeError):
        next(stream)


def test_reorder_moves_caches_and_tokens(params) -> None:
    backend = get_backend("numpy")
    dec = Decoder(backend, CFG, params, batch=3)
    dec.feed(np.array([[1, 2], [3, 4], [5, 6]]))
    moved = Decoder(backend, CFG, params, batch=3)
    moved.feed(np.array([[5, 6], [5, 6], [1, 2]]))
    dec.reorder(np.array([2, 2, 0]))
    np.testing.assert_array_equal(dec.context, moved.context)
    np.testing.assert_allclose(
        dec.feed(np.array([[7], [8], [9]])),
        moved.feed(np.array([[7], [8], [9]])),
        rtol=1e-12,
    )
    with pytest.raises(ShapeError):
        dec.reorder(np.array([0, 3, 1]))
