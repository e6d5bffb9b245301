"""Conformance of the whole GPT model's error contract.

Spec: ``cllm_spec.model``. Bad params, ids, targets, offsets, caches and
options each raise their typed error; and a backward needs a loss, consumes
its cache, refuses params of another dtype and a decoding cache, while
``forward_loss`` is forward's loss and cache.
"""

from __future__ import annotations

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
from cllm_spec.model import (
    ModelConfig,
    backward,
    forward,
    forward_loss,
    init_kv_caches,
    init_params,
)
from conformance.gradcheck import needs_float64
from conformance.model_helpers import TINY, make_batch, perturbed_params


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
