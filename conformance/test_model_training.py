"""Conformance of the whole GPT model's training path.

Spec: ``cllm_spec.model``. The model is composed in the spec module, so these
tests check that a backend's kernels fit together into the right function: the
full gradient by finite differences, against the float64 oracle, over an AdamW
trajectory, a golden model, and through the properties the original project
lacked (section 13 of its notes): a loss that is cross-entropy and moves after
one step, every parameter trained; then determinism, inputs left unchanged, and
the parameter counts of the original's configurations.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from cllm_spec.model import (
    IGNORE_INDEX,
    ModelConfig,
    backward,
    forward,
    init_params,
    param_count,
    param_layout,
)
from cllm_spec.optim import init_adam_state
from cllm_spec.tolerances import tolerance
from conformance.gradcheck import needs_float64
from conformance.model_helpers import TINY, make_batch, perturbed_params

#: Shapes the original broke on: NH not dividing 8, F != 4C, one head, depth 3.
GRID = [
    {**TINY, "n_hidden": 12},
    {
        "vocab_size": 5,
        "n_embd": 9,
        "n_layer": 1,
        "n_head": 3,
        "block_size": 4,
        "n_hidden": 5,
        "activation": "relu",
        "tie_embeddings": False,
    },
    {
        "vocab_size": 17,
        "n_embd": 16,
        "n_layer": 3,
        "n_head": 1,
        "block_size": 5,
        "activation": "gelu_tanh",
    },
]
GRID_IDS = ["tiny", "nh3-f5-relu-untied", "nh1-l3-gelu_tanh"]


def loss_of(backend: Any, cfg: ModelConfig, params: np.ndarray, *batch: Any) -> float:
    loss = forward(backend, cfg, params, *batch)[1]
    assert loss is not None
    return loss


def loss_and_grads(
    backend: Any, cfg: ModelConfig, params: np.ndarray, ids: Any, targets: Any
) -> tuple[np.ndarray, float, np.ndarray]:
    logits, loss, cache = forward(backend, cfg, params, ids, targets)
    assert loss is not None
    return logits, loss, backward(backend, cfg, params, cache)


def sampled_coordinates(
    cfg: ModelConfig, rng: np.random.Generator, per_tensor: int
) -> np.ndarray:
    """Up to ``per_tensor`` distinct flat indices inside every parameter tensor."""
    layout = param_layout(cfg)
    picks = []
    for name in layout:  # per tensor, so that every tensor is covered
        start = layout.offsets[name]
        n = layout.numel(name)
        picks.append(start + rng.choice(n, min(n, per_tensor), replace=False))
    return np.concatenate(picks)


# ----------------------------------------------------- finite differences ---
@pytest.mark.parametrize(
    ("activation", "tied"),
    [("gelu", True), ("gelu_tanh", False), ("relu", True)],
)
def test_full_model_gradient_matches_finite_differences(
    backend: Any,
    oracle: Any,
    rng: np.random.Generator,
    check: Any,
    activation: str,
    tied: bool,
) -> None:
    needs_float64(backend)
    cfg = ModelConfig(**TINY, n_hidden=12, activation=activation, tie_embeddings=tied)
    params = perturbed_params(cfg, rng)
    ids, targets = make_batch(cfg, rng, 2, 6, n_ignored=2)
    _, _, grads = loss_and_grads(backend, cfg, params, ids, targets)
    coords = sampled_coordinates(cfg, rng, per_tensor=8)
    assert coords.size >= 200
    h = 1e-6
    numeric = np.empty(coords.size)
    for k, i in enumerate(coords):  # one pair of forwards per sampled coordinate
        plus, minus = params.copy(), params.copy()
        plus[i] += h
        minus[i] -= h
        numeric[k] = (
            loss_of(backend, cfg, plus, ids, targets)
            - loss_of(backend, cfg, minus, ids, targets)
        ) / (2 * h)
    check.close(
        grads[coords],
        numeric,
        output="gradcheck",
        tol=tolerance("gradcheck", "model", np.float64),
    )


# ------------------------------------------------------------ vs oracle -----
@pytest.mark.parametrize("shape", GRID, ids=GRID_IDS)
def test_forward_and_backward_match_oracle(
    backend: Any,
    dtype: np.dtype,
    oracle: Any,
    rng: np.random.Generator,
    check: Any,
    shape: dict[str, Any],
) -> None:
    cfg = ModelConfig(**shape)
    params = perturbed_params(cfg, rng).astype(dtype)
    ids, targets = make_batch(cfg, rng, 3, cfg.block_size)
    logits, loss, grads = loss_and_grads(backend, cfg, params, ids, targets)
    ref_logits, ref_loss, ref_grads = loss_and_grads(
        oracle, cfg, params.astype(np.float64), ids, targets
    )
    check.close(logits, ref_logits, output="logits", dtype=dtype)
    check.close(np.asarray(loss, dtype), np.asarray(ref_loss), output="loss")
    check.close(grads, ref_grads, output="grads", dtype=dtype)


def test_adamw_loss_trajectory_matches_oracle(
    backend: Any, dtype: np.dtype, oracle: Any, rng: np.random.Generator, check: Any
) -> None:
    cfg = ModelConfig(**TINY)
    start = init_params(cfg, rng, np.float64).astype(dtype)
    ids, targets = make_batch(cfg, rng, 4, cfg.block_size)
    hyper = {"lr": 1e-2, "betas": (0.9, 0.95), "weight_decay": 0.1}

    def trajectory(b: Any, params: np.ndarray) -> np.ndarray:
        state = init_adam_state(params)
        losses = []
        for _ in range(12):
            _, loss, grads = loss_and_grads(b, cfg, params, ids, targets)
            losses.append(loss)
            params, state = b.adamw_step(params, grads, state, **hyper)
        return np.array(losses)

    losses = trajectory(backend, start).astype(dtype)
    expected = trajectory(oracle, start.astype(np.float64))
    check.close(losses, expected, output="trajectory")
    # The run must actually learn, or the comparison says little.
    assert expected[-1] < expected[0] - 0.1


# ----------------------------------------------------------------- golden ---
def test_golden_model_whose_blocks_are_silent(
    backend: Any, dtype: np.dtype, check: Any
) -> None:
    # V 3, C 2, untied. All weights and biases 0 and LayerNorm weights 1, except
    # ln_f.bias = b = (1, 0) and lm_head rows (0, 0), (1, 0), (2, 0). Then every
    # block adds 0 to x = 0, LN_f of a constant row is its bias b, so each
    # position's logits are lm_head @ b = (0, 1, 2); p = softmax = e^i / S with
    # S = 1 + e + e^2. Targets (2, 0): loss = mean(log S - 2, log S - 0)
    # = log S - 1. dlogits summed over the two positions = p - (e0 + e2) / 2, so
    # d lm_head = (p - (e0 + e2)/2) b^T (column 1 zero), d ln_f.bias =
    # lm_head^T (p - (e0 + e2)/2) = (p1 - 0 + 2 (p2 - 1/2), 0), d ln_f.weight = 0
    # (x_hat = 0).
    cfg = ModelConfig(
        vocab_size=3, n_embd=2, n_layer=1, n_head=1, block_size=4, tie_embeddings=False
    )
    layout = param_layout(cfg)
    params = layout.zeros(dtype)
    w = layout.views(params)
    for name in ("model.h.0.ln_1.weight", "model.h.0.ln_2.weight", "model.ln_f.weight"):
        w[name][...] = 1.0
    w["model.ln_f.bias"][...] = [1.0, 0.0]
    w["model.lm_head.weight"][...] = [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]
    ids, targets = np.array([[1, 2]]), np.array([[2, 0]])
    logits, loss, grads = loss_and_grads(backend, cfg, params, ids, targets)
    s = 1 + math.e + math.e**2
    p = np.array([1 / s, math.e / s, math.e**2 / s])
    r = p - np.array([0.5, 0.0, 0.5])
    g = layout.views(grads)
    check.close(logits, np.tile([0.0, 1.0, 2.0], (1, 2, 1)), output="logits")
    check.close(np.asarray(loss, dtype), np.asarray(math.log(s) - 1), output="loss")
    check.close(g["model.lm_head.weight"], np.stack([r, 0 * r], 1), output="grads")
    check.close(g["model.ln_f.bias"], np.array([r[1] + 2 * r[2], 0.0]), output="grads")
    check.close(g["model.ln_f.weight"], np.zeros(2), output="grads")


# ------------------------------------------------- loss and training --------
def test_loss_is_cross_entropy_of_the_logits(
    backend: Any, dtype: np.dtype, rng: np.random.Generator, check: Any
) -> None:
    cfg = ModelConfig(**TINY)
    params = perturbed_params(cfg, rng).astype(dtype)
    ids, targets = make_batch(cfg, rng, 3, 6, n_ignored=4)
    logits, loss, _ = forward(backend, cfg, params, ids, targets)
    # Independent float64 log-sum-exp over the kept positions only.
    z = logits.astype(np.float64).reshape(-1, cfg.vocab_size)
    y = targets.reshape(-1)
    keep = y != IGNORE_INDEX
    m = z.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
    per_token = lse[keep] - z[keep, y[keep]]
    assert loss is not None and loss >= 0.0
    check.close(np.asarray(loss, dtype), np.asarray(per_token.mean()), output="loss")


def test_loss_of_a_fully_ignored_batch_is_nan(
    backend: Any, dtype: np.dtype, rng: np.random.Generator
) -> None:
    cfg = ModelConfig(**TINY)
    params = init_params(cfg, rng, dtype)
    ids = rng.integers(0, cfg.vocab_size, (2, 3))
    targets = np.full((2, 3), IGNORE_INDEX)
    loss = forward(backend, cfg, params, ids, targets)[1]
    assert loss is not None and math.isnan(loss)  # 0/0, PyTorch's mean


def test_initial_loss_is_close_to_log_vocab(
    backend: Any, dtype: np.dtype, rng: np.random.Generator
) -> None:
    # gpt2 init: LN_f output has unit variance and wte entries std 0.02, so the
    # logits have std ~0.02 * sqrt(C) = 0.11 and the loss ~ ln V + 0.11^2 / 2.
    cfg = ModelConfig(vocab_size=64, n_embd=32, n_layer=2, n_head=4, block_size=16)
    params = init_params(cfg, rng, dtype)
    ids, targets = make_batch(cfg, rng, 4, 16, n_ignored=0)
    loss = loss_of(backend, cfg, params, ids, targets)
    assert abs(loss - math.log(cfg.vocab_size)) < 0.05


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_one_adamw_step_lowers_the_loss(
    backend: Any, dtype: np.dtype, rng: np.random.Generator, tied: bool
) -> None:
    cfg = ModelConfig(
        vocab_size=32, n_embd=16, n_layer=2, n_head=2, block_size=8, tie_embeddings=tied
    )
    params = init_params(cfg, rng, dtype)
    ids, targets = make_batch(cfg, rng, 4, 8, n_ignored=0)
    _, before, grads = loss_and_grads(backend, cfg, params, ids, targets)
    stepped, _ = backend.adamw_step(params, grads, init_adam_state(params), lr=1e-2)
    after = loss_of(backend, cfg, stepped, ids, targets)
    # Each parameter moves by ~lr against its gradient's sign: a clear drop.
    assert after < before - 0.05


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_every_parameter_tensor_receives_a_gradient(
    backend: Any, dtype: np.dtype, rng: np.random.Generator, tied: bool
) -> None:
    cfg = ModelConfig(**TINY, tie_embeddings=tied)
    params = init_params(cfg, rng, dtype)
    t = 5  # < block_size, so rows t.. of wpe must stay exactly zero
    ids = np.array([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]])
    targets = np.array([[2, 3, 4, 5, 6], [4, 3, 2, 1, 0]])
    _, _, grads = loss_and_grads(backend, cfg, params, ids, targets)
    g = param_layout(cfg).views(grads)
    silent = [name for name, grad in g.items() if not np.any(grad != 0)]
    assert silent == [], f"parameters without gradient: {silent}"
    wpe = g["model.wpe.weight"]
    assert np.all(np.any(wpe[:t] != 0, axis=1)) and not np.any(wpe[t:])
    used = np.isin(np.arange(cfg.vocab_size), ids)
    rows_hit = np.any(g["model.wte.weight"] != 0, axis=1)
    if tied:  # the LM head reaches every row of wte
        assert np.all(rows_hit)
    else:  # the lookup reaches exactly the ids used; lm_head every row
        np.testing.assert_array_equal(rows_hit, used)
        assert np.all(np.any(g["model.lm_head.weight"] != 0, axis=1))


# ------------------------------------------------ determinism and inputs ----
def test_forward_and_backward_are_deterministic(
    backend: Any, dtype: np.dtype, rng: np.random.Generator, check: Any
) -> None:
    cfg = ModelConfig(**TINY)
    params = perturbed_params(cfg, rng).astype(dtype)
    ids, targets = make_batch(cfg, rng, 2, 6)
    first = loss_and_grads(backend, cfg, params, ids, targets)
    second = loss_and_grads(backend, cfg, params, ids, targets)
    check.exact(first[0], second[0], output="logits")
    check.exact(np.float64(first[1]), np.float64(second[1]), output="loss")
    check.exact(first[2], second[2], output="grads")


def test_inputs_are_not_mutated(
    backend: Any, dtype: np.dtype, rng: np.random.Generator, check: Any
) -> None:
    cfg = ModelConfig(**TINY)
    params = perturbed_params(cfg, rng).astype(dtype)
    ids, targets = make_batch(cfg, rng, 2, 6)
    saved = [a.copy() for a in (params, ids, targets)]
    loss_and_grads(backend, cfg, params, ids, targets)
    for name, before, after in zip(
        ("params", "ids", "targets"), saved, (params, ids, targets), strict=True
    ):
        check.exact(after, before, output=name)


# --------------------------------------- parity with the original project ---
# The original counted V*D + L*(3*D^2 + 2*D*F + D + F + 4*D) (notes, section 8).
# Ours adds the position table T_max*C, QKV biases (3C), the attention output
# projection (C^2 + C) and the final LayerNorm (2C):
#     ours - original = T_max*C + L*(C^2 + 4C) + 2C          (tied)
# With T_max = 512 (the context length the original wrote into every header):
ORIGINAL_CONFIGS = [
    # (V, C, L, NH, F, original count, ours)
    # Day 4: 864 + 16384 + (4096 + 8192 + 288 + 128) + 64
    #      = 12416 + 16384 + (1024 + 128) + 64
    (27, 32, 1, 1, 128, 12_416, 30_016),
    # 24384 + 32768 + 2 * (16384 + 16384 + 576 + 128) + 128
    #      = 82624 + 32768 + 2 * (4096 + 256) + 128
    (381, 64, 2, 4, 128, 82_624, 124_224),
    # 1280000 + 131072 + 6 * (262144 + 524288 + 2304 + 1024) + 512
    #      = 5619200 + 131072 + 6 * (65536 + 1024) + 512
    (5000, 256, 6, 8, 1024, 5_619_200, 6_150_144),
]


@pytest.mark.parametrize(
    ("v", "c", "n_layer", "nh", "f", "original", "ours"), ORIGINAL_CONFIGS
)
def test_parameter_counts_of_the_original_configs(
    v: int, c: int, n_layer: int, nh: int, f: int, original: int, ours: int
) -> None:
    cfg = ModelConfig(
        vocab_size=v, n_embd=c, n_layer=n_layer, n_head=nh, n_hidden=f, block_size=512
    )
    assert v * c + n_layer * (3 * c * c + 2 * c * f + c + f + 4 * c) == original
    assert param_count(cfg) == ours == param_layout(cfg).size
    assert ours - original == 512 * c + n_layer * (c * c + 4 * c) + 2 * c
