"""Conformance of the whole GPT model composed of a backend's kernels.

Spec: ``cllm_spec.model``. The model is composed in the spec module, so these
tests check that a backend's kernels fit together into the right function: the
full gradient by finite differences, against the float64 oracle, over an AdamW
trajectory, and through the properties the original project lacked (section 13
of its notes): a loss that is cross-entropy and moves after one step, every
parameter trained, generation equal to the training forward, causality.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from cllm_spec.errors import (
    CacheFullError,
    ConfigError,
    DTypeError,
    EmptyInputError,
    IdRangeError,
    NonFiniteError,
    ShapeError,
    Unsupported,
)
from cllm_spec.generate import Decoder, decode_last
from cllm_spec.model import (
    IGNORE_INDEX,
    CheckedParams,
    ModelConfig,
    backward,
    checked_params,
    forward,
    forward_loss,
    init_kv_caches,
    init_params,
    param_count,
    param_layout,
)
from cllm_spec.optim import init_adam_state
from cllm_spec.tolerances import tolerance
from conformance.gradcheck import needs_float64

TINY = {"vocab_size": 13, "n_embd": 8, "n_layer": 2, "n_head": 2, "block_size": 7}
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


def perturbed_params(cfg: ModelConfig, rng: np.random.Generator) -> np.ndarray:
    """float64 params far from the init, so every path carries a sizeable signal."""
    params = init_params(cfg, rng, np.float64)
    return params + 0.3 * rng.standard_normal(params.shape)


def make_batch(
    cfg: ModelConfig, rng: np.random.Generator, b: int, t: int, n_ignored: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    ids = rng.integers(0, cfg.vocab_size, (b, t))
    targets = rng.integers(0, cfg.vocab_size, (b, t))
    flat = targets.reshape(-1)
    flat[rng.choice(flat.size, n_ignored, replace=False)] = IGNORE_INDEX
    return ids, targets


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


# --------------------------------------------------- generation and cache ---
def test_kv_cache_chunks_equal_the_full_forward(
    backend: Any, dtype: np.dtype, rng: np.random.Generator, check: Any
) -> None:
    cfg = ModelConfig(**TINY)
    params = perturbed_params(cfg, rng).astype(dtype)
    ids = rng.integers(0, cfg.vocab_size, (2, cfg.block_size))
    full, _, _ = forward(backend, cfg, params, ids)
    caches = init_kv_caches(backend, cfg, 2, dtype)
    pieces, start = [], 0
    for size in (3, 1, 2, 1):
        chunk, _, cache = forward(
            backend,
            cfg,
            params,
            ids[:, start : start + size],
            kv_caches=caches,
            pos_offset=start,
        )
        assert cache.kv_caches is not None
        caches = cache.kv_caches
        pieces.append(chunk)
        start += size
    assert [kv.length for kv in caches] == [cfg.block_size] * cfg.n_layer
    check.close(np.concatenate(pieces, axis=1), full, output="kv_cache", dtype=dtype)


def test_greedy_decoding_with_kv_cache_follows_the_full_forward(
    backend: Any, dtype: np.dtype, rng: np.random.Generator, check: Any
) -> None:
    cfg = ModelConfig(**TINY, n_hidden=12)
    params = perturbed_params(cfg, rng).astype(dtype)
    seq = rng.integers(0, cfg.vocab_size, (2, 2))
    caches = init_kv_caches(backend, cfg, 2, dtype)
    logits, _, cache = forward(backend, cfg, params, seq, kv_caches=caches)
    while True:
        full, _, _ = forward(backend, cfg, params, seq)
        check.close(logits[:, -1], full[:, -1], output="kv_cache", dtype=dtype)
        nxt = np.argmax(logits[:, -1], axis=-1)
        np.testing.assert_array_equal(nxt, np.argmax(full[:, -1], axis=-1))
        if seq.shape[1] == cfg.block_size:
            break
        assert cache.kv_caches is not None
        logits, _, cache = forward(
            backend,
            cfg,
            params,
            nxt[:, None],
            kv_caches=cache.kv_caches,
            pos_offset=seq.shape[1],
        )
        seq = np.concatenate([seq, nxt[:, None]], axis=1)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_last_position_logits_equal_the_full_forwards_last(
    backend: Any, dtype: np.dtype, rng: np.random.Generator, check: Any, tied: bool
) -> None:
    # logits="last" heads only the position generation samples from; a slice
    # of any other position (the first, or the one before last) fails here
    cfg = ModelConfig(**{**TINY, "tie_embeddings": tied})
    params = perturbed_params(cfg, rng).astype(dtype)
    ids = rng.integers(0, cfg.vocab_size, (3, 5))
    full, _, _ = forward(backend, cfg, params, ids)
    last, loss, cache = forward(backend, cfg, params, ids, logits="last")
    assert last.shape == (3, 1, cfg.vocab_size) and loss is None
    check.close(last, full[:, -1:], output="logits", dtype=dtype)
    # the same through KV caches: a prefill chunk, then decoding steps of B = 3
    caches = init_kv_caches(backend, cfg, 3, dtype)
    start = 0
    for size in (3, 1, 1):
        got, _, cache = forward(
            backend,
            cfg,
            params,
            ids[:, start : start + size],
            kv_caches=caches,
            pos_offset=start,
            logits="last",
        )
        start += size
        assert cache.kv_caches is not None
        caches = cache.kv_caches
        check.close(got, full[:, start - 1 : start], output="kv_cache", dtype=dtype)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_decoding_steps_equal_the_full_forwards_last(
    backend: Any, dtype: np.dtype, rng: np.random.Generator, check: Any, tied: bool
) -> None:
    # generate.decode_last is the decoding path of cllm generate: a backend's
    # fused model_kernels.decode_last (the C backend's whole-model call) runs
    # every step, the prefill included; every row of the batch, every chunk
    # size and the appended caches must match one full forward
    cfg = ModelConfig(**{**TINY, "tie_embeddings": tied})
    params = perturbed_params(cfg, rng).astype(dtype)
    ids = rng.integers(0, cfg.vocab_size, (3, 7))
    full, _, _ = forward(backend, cfg, params, ids)
    caches = init_kv_caches(backend, cfg, 3, dtype)
    start = 0
    for size in (2, 1, 3, 1):
        got, caches = decode_last(
            backend, cfg, params, ids[:, start : start + size], caches, start
        )
        start += size
        assert got.shape == (3, 1, cfg.vocab_size)
        assert all(kv.length == start for kv in caches)
        check.close(got, full[:, start - 1 : start], output="kv_cache", dtype=dtype)
    # the caches hold what a prefill of the whole sequence appends
    fresh = init_kv_caches(backend, cfg, 3, dtype)
    _, _, whole = forward(backend, cfg, params, ids, kv_caches=fresh, logits="last")
    assert whole.kv_caches is not None
    for got_kv, want_kv in zip(caches, whole.kv_caches, strict=True):
        check.close(
            got_kv.k[:, :, :start],
            want_kv.k[:, :, :start],
            output="kv_cache",
            dtype=dtype,
        )
        check.close(
            got_kv.v[:, :, :start],
            want_kv.v[:, :, :start],
            output="kv_cache",
            dtype=dtype,
        )


def test_decoder_sampled_steps_equal_the_full_forwards_last(
    backend: Any, dtype: np.dtype, rng: np.random.Generator, check: Any
) -> None:
    # Decoder.feed_next is the step of cllm generate's loop: a backend's
    # model_kernels.decode_session (the C backend's) runs it over the
    # decoder's own caches with no new checks. Every row and every step, past
    # block_size too (the caches refilled), must match one full forward over
    # the context the decoder holds.
    cfg = ModelConfig(**TINY)
    params = perturbed_params(cfg, rng).astype(dtype)
    seq = rng.integers(0, cfg.vocab_size, (3, cfg.block_size + 4))
    decoder = Decoder(backend, cfg, params, batch=3)
    got = decoder.feed(seq[:, :2])
    for end in range(2, seq.shape[1]):
        context = seq[:, max(0, end - cfg.block_size) : end]
        assert decoder.context.tolist() == context.tolist()
        full, _, _ = forward(backend, cfg, params, context, logits="last")
        check.close(got, full[:, 0], output="kv_cache", dtype=dtype)
        got = decoder.feed_next(seq[:, end])


def test_checked_params_skip_only_the_finiteness_scan(
    backend: Any, rng: np.random.Generator, check: Any
) -> None:
    cfg = ModelConfig(**TINY)
    params = perturbed_params(cfg, rng).astype(np.float32)
    ids = rng.integers(0, cfg.vocab_size, (2, 4))
    want = forward(backend, cfg, params, ids)[0]
    got = forward(backend, cfg, checked_params(backend, cfg, params), ids)[0]
    check.close(got, want.astype(np.float64), output="logits", dtype=np.float32)
    with pytest.raises(ShapeError):  # the cheap checks still run
        forward(backend, cfg, CheckedParams(params[:-1], cfg), ids)


def test_logits_at_a_position_ignore_later_tokens(
    backend: Any, dtype: np.dtype, rng: np.random.Generator, check: Any
) -> None:
    cfg = ModelConfig(**TINY)
    params = perturbed_params(cfg, rng).astype(dtype)
    ids = rng.integers(0, cfg.vocab_size, (2, cfg.block_size))
    s = 3
    changed = ids.copy()
    changed[:, s:] = (
        ids[:, s:] + 1 + rng.integers(0, cfg.vocab_size - 1)
    ) % cfg.vocab_size
    a = forward(backend, cfg, params, ids)[0]
    b = forward(backend, cfg, params, changed)[0]
    check.close(b[:, :s], a[:, :s], output="causality", dtype=dtype)
    # The change is visible from position s on, so the test can see a leak.
    assert np.all(np.abs(b[:, s:] - a[:, s:]).max(axis=-1) > 1e-3)


def test_training_and_inference_share_one_forward(
    backend: Any, dtype: np.dtype, rng: np.random.Generator, check: Any
) -> None:
    cfg = ModelConfig(**TINY)
    params = perturbed_params(cfg, rng).astype(dtype)
    ids, targets = make_batch(cfg, rng, 2, 5)
    with_loss = forward(backend, cfg, params, ids, targets)[0]
    without = forward(backend, cfg, params, ids)[0]
    check.exact(with_loss, without, output="logits")


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


# ------------------------------------------------------------ bad inputs ----
def _bad_call(case: str, backend: Any) -> None:
    cfg = ModelConfig(**TINY)
    params = init_params(cfg, np.random.default_rng(0), np.float32)
    ids = np.zeros((2, 3), dtype=np.int64)
    targets = np.ones((2, 3), dtype=np.int64)
    args: dict[str, Any] = {"ids": ids, "targets": targets}
    kw: dict[str, Any] = {}
    if case == "params-float16":
        params = params.astype(np.float16)
    elif case == "params-int":
        params = params.astype(np.int32)
    elif case == "params-length":
        params = params[:-1].copy()
    elif case == "params-rank":
        params = params.reshape(1, -1)
    elif case == "params-nan":
        params[5] = np.nan
    elif case == "ids-float":
        args["ids"] = ids.astype(np.float32)
    elif case == "ids-rank":
        args["ids"] = ids[0]
    elif case == "ids-empty":
        args["ids"], args["targets"] = ids[:, :0], targets[:, :0]
    elif case == "ids-too-large":
        ids[1, 2] = cfg.vocab_size
    elif case == "ids-negative":
        ids[0, 0] = -1
    elif case == "targets-shape":
        args["targets"] = targets[:, :2]
    elif case == "targets-float":
        args["targets"] = targets.astype(np.float64)
    elif case == "targets-range":
        targets[0, 1] = -1  # only -100 is ignored
    elif case == "too-long":
        args["ids"] = np.zeros((1, cfg.block_size + 1), dtype=np.int64)
        args["targets"] = None
    elif case == "offset-negative":
        kw["pos_offset"] = -1
    elif case == "offset-past-end":
        kw["pos_offset"] = cfg.block_size - 2
    elif case == "cache-count":
        kw["kv_caches"] = init_kv_caches(backend, cfg, 2, np.float32)[:1]
    elif case == "cache-length":
        kw["kv_caches"] = init_kv_caches(backend, cfg, 2, np.float32)
        kw["pos_offset"] = 1
    elif case == "cfg-type":
        cfg = TINY  # type: ignore[assignment]
    elif case == "logits-choice":
        args["targets"], kw["logits"] = None, "first"
    elif case == "logits-last-with-targets":
        kw["logits"] = "last"
    elif case == "cache-heads":
        kw["kv_caches"] = tuple(
            backend.kv_cache_new(2, 1, cfg.block_size, cfg.n_embd, np.float32)
            for _ in range(cfg.n_layer)
        )
    elif case == "cache-dtype":
        kw["kv_caches"] = init_kv_caches(backend, cfg, 2, np.float64)
    elif case == "cache-batch":
        kw["kv_caches"] = init_kv_caches(backend, cfg, 3, np.float32)
    elif case == "cache-no-room":
        kw["kv_caches"] = tuple(
            backend.kv_cache_new(2, cfg.n_head, 2, cfg.head_size, np.float32)
            for _ in range(cfg.n_layer)
        )
    forward(backend, cfg, params, args["ids"], args["targets"], **kw)


BAD_CASES = {
    "params-float16": DTypeError,
    "params-int": DTypeError,
    "params-length": ShapeError,
    "params-rank": ShapeError,
    "params-nan": NonFiniteError,
    "ids-float": DTypeError,
    "ids-rank": ShapeError,
    "ids-empty": EmptyInputError,
    "ids-too-large": IdRangeError,
    "ids-negative": IdRangeError,
    "targets-shape": ShapeError,
    "targets-float": DTypeError,
    "targets-range": IdRangeError,
    "too-long": ShapeError,
    "offset-negative": ConfigError,
    "offset-past-end": ShapeError,
    "cache-count": ConfigError,
    "cache-length": ShapeError,
    "cfg-type": ConfigError,
    "logits-choice": ConfigError,
    "logits-last-with-targets": ConfigError,
    # the model checks every cache's buffers itself: its kernels may not
    "cache-heads": ShapeError,
    "cache-dtype": DTypeError,
    "cache-batch": ShapeError,
    "cache-no-room": CacheFullError,
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_inputs_raise_typed_errors(backend: Any, case: str) -> None:
    with pytest.raises(BAD_CASES[case]):
        _bad_call(case, backend)


def test_backward_needs_a_loss(backend: Any, rng: np.random.Generator) -> None:
    cfg = ModelConfig(**TINY)
    params = init_params(cfg, rng, np.float32)
    _, loss, cache = forward(backend, cfg, params, np.zeros((1, 2), dtype=np.int64))
    assert loss is None
    with pytest.raises(ConfigError, match="targets"):
        backward(backend, cfg, params, cache)


def test_a_backward_consumes_its_cache(
    backend: Any, dtype: np.dtype, rng: np.random.Generator
) -> None:
    # like PyTorch's freed graph: the second backward of one forward is an
    # error on every backend, never gradients from memory a backend reused
    cfg = ModelConfig(**TINY)
    params = perturbed_params(cfg, rng).astype(dtype)
    ids, targets = make_batch(cfg, rng, 2, 4)
    cache = forward(backend, cfg, params, ids, targets)[2]
    first = backward(backend, cfg, params, cache)
    with pytest.raises(ConfigError, match="already used by a backward"):
        backward(backend, cfg, params, cache)
    again = backward(
        backend, cfg, params, forward(backend, cfg, params, ids, targets)[2]
    )
    np.testing.assert_array_equal(again, first)  # a new forward is a new cache


def test_forward_loss_is_forwards_loss_and_cache(
    backend: Any, dtype: np.dtype, rng: np.random.Generator
) -> None:
    # training's forward returns no logits, so a backend may reuse their
    # buffer (the C backend writes the probabilities over them): the loss
    # and the gradient must be forward's, bit for bit
    cfg = ModelConfig(**TINY)
    params = perturbed_params(cfg, rng).astype(dtype)
    ids, targets = make_batch(cfg, rng, 3, 5)
    for reduction in ("mean", "sum"):
        _, want_loss, want_cache = forward(
            backend, cfg, params, ids, targets, loss_reduction=reduction
        )
        loss, cache = forward_loss(
            backend, cfg, params, ids, targets, loss_reduction=reduction
        )
        assert loss == want_loss
        np.testing.assert_array_equal(
            backward(backend, cfg, params, cache),
            backward(backend, cfg, params, want_cache),
        )
    with pytest.raises(ConfigError, match="targets"):
        forward_loss(backend, cfg, params, ids, None)  # type: ignore[arg-type]


def test_backward_with_params_of_another_dtype(
    backend: Any, rng: np.random.Generator
) -> None:
    needs_float64(backend)
    cfg = ModelConfig(**TINY)
    params = init_params(cfg, rng, np.float64)
    ids, targets = make_batch(cfg, rng, 1, 3)
    cache = forward(backend, cfg, params, ids, targets)[2]
    if np.dtype(np.float32) in tuple(np.dtype(d) for d in backend.dtypes):
        with pytest.raises(DTypeError):
            backward(backend, cfg, params.astype(np.float32), cache)
    else:
        pytest.skip(f"backend {backend.name} has no float32")


def test_backward_through_a_decoding_cache_is_unsupported(
    backend: Any, rng: np.random.Generator
) -> None:
    cfg = ModelConfig(**TINY)
    params = init_params(cfg, rng, np.float32)
    caches = init_kv_caches(backend, cfg, 1, np.float32)
    one = np.zeros((1, 1), dtype=np.int64)
    cache = forward(backend, cfg, params, one, one, kv_caches=caches)[2]
    assert cache.kv_caches is not None
    cache = forward(
        backend, cfg, params, one, one, kv_caches=cache.kv_caches, pos_offset=1
    )[2]
    with pytest.raises(Unsupported):
        backward(backend, cfg, params, cache)


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
