"""The C backend's model kernels (``cllm_c.model_kernels``).

What model.forward and backward run after validating once: the checked
kernels minus their checks, so the same bits as those kernels and as the
model's plain composition of them, whatever the thread count.

The whole module is skipped when the extension is not built.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

cllm_c = pytest.importorskip("cllm_c", reason="the C extension is not built")

from cllm_c import _lib  # noqa: E402

from tests import c_backend_helpers  # noqa: E402
from tests.c_backend_helpers import F32, _flatten, _normal  # noqa: E402

# pytest finds a test's fixtures among its module's names
rng = c_backend_helpers.rng
threads = c_backend_helpers.threads


def test_model_kernels_forward_computes_what_the_checked_kernels_do(rng):
    """``cllm_c.model_kernels`` (what model.forward runs after validating once)
    is the checked kernels minus their checks: the same bits, decoding included."""
    x = _normal(rng, 2, 3, 16)
    w_qkv, b_qkv = _normal(rng, 48, 16, scale=0.2), _normal(rng, 48)
    w_o, b_o = _normal(rng, 16, 16, scale=0.2), _normal(rng, 16)
    w_fc, b_fc = _normal(rng, 40, 16, scale=0.2), _normal(rng, 40)
    w_pr, b_pr = _normal(rng, 16, 40, scale=0.2), _normal(rng, 16)
    ids = rng.integers(0, 50, (2, 3))
    wte, wpe = _normal(rng, 50, 16), _normal(rng, 9, 16)
    u = cllm_c.model_kernels

    def mha(fn, cache):  # a prefill of 3, then a decoding step of 1
        y1, _, cache = fn(x, w_qkv, b_qkv, w_o, b_o, n_head=4, kv_cache=cache)
        y2, _, cache = fn(x[:, :1], w_qkv, b_qkv, w_o, b_o, n_head=4, kv_cache=cache)
        return y1, y2, cache.k.copy(), cache.v.copy()

    pairs = [
        (u.linear_forward(x, w_qkv, b_qkv), cllm_c.linear_forward(x, w_qkv, b_qkv)),
        (
            u.layernorm_forward(x, w_o[0], b_o, 1e-5),
            cllm_c.layernorm_forward(x, w_o[0], b_o),
        ),
        (
            u.ffn_forward(x, w_fc, b_fc, w_pr, b_pr, activation="gelu"),
            cllm_c.ffn_forward(x, w_fc, b_fc, w_pr, b_pr, activation="gelu"),
        ),
        (
            u.embedding_forward(ids, wte, wpe, 2),
            cllm_c.embedding_forward(ids, wte, wpe, 2),
        ),
        (
            mha(u.mha_forward, cllm_c.kv_cache_new(2, 4, 5, 4, np.float32)),
            mha(cllm_c.mha_forward, cllm_c.kv_cache_new(2, 4, 5, 4, np.float32)),
        ),
    ]
    for fast, checked in pairs:
        got, want = _flatten(fast), _flatten(checked)
        assert len(got) == len(want) > 0
        for a, b in zip(got, want, strict=True):
            assert a.tobytes() == b.tobytes()


def _model_case(rng: np.random.Generator, tied: bool) -> tuple[Any, ...]:
    from cllm_spec.model import ModelConfig, init_params

    cfg = ModelConfig(
        vocab_size=37, n_embd=32, n_layer=2, n_head=4, block_size=16,
        activation="gelu", tie_embeddings=tied,
    )  # fmt: skip
    params = init_params(cfg, rng, F32)
    ids = rng.integers(0, 37, (3, 16))
    targets = rng.integers(0, 37, (3, 16))
    targets[0, :4] = -100
    return cfg, params, ids, targets


def _plain(backend: Any) -> Any:
    """The backend without its model kernels: the model's plain composition."""
    from types import SimpleNamespace

    names = [n for n in dir(backend) if not n.startswith("_") and n != "model_kernels"]
    return SimpleNamespace(**{n: getattr(backend, n) for n in names})


@pytest.mark.parametrize("tied", [True, False])
def test_model_kernels_compute_the_plain_composition(rng, tied):
    """Same kernels, so the same bits, except the tied wte gradient, whose two
    terms (LM head, lookup) are added in the other order."""
    from cllm_spec.model import backward, forward, param_views

    cfg, params, ids, targets = _model_case(rng, tied)
    runs = []
    for backend in (cllm_c, _plain(cllm_c)):
        logits, loss, cache = forward(backend, cfg, params, ids, targets)
        runs.append(
            (logits, loss, param_views(cfg, backward(backend, cfg, params, cache)))
        )
    (fast_logits, fast_loss, fast), (logits, loss, plain) = runs
    np.testing.assert_array_equal(fast_logits, logits)
    assert fast_loss == loss
    for name, grad in plain.items():
        if tied and name == "model.wte.weight":
            np.testing.assert_allclose(fast[name], grad, rtol=1e-6, atol=1e-8)
        else:
            np.testing.assert_array_equal(fast[name], grad, err_msg=name)


def test_model_step_bits_do_not_depend_on_the_thread_count(rng, threads):
    from cllm_spec.model import backward, forward

    cfg, params, ids, targets = _model_case(rng, True)
    results = []
    for n in (1, 2, 3):
        _lib.set_num_threads(n)
        logits, loss, cache = forward(cllm_c, cfg, params, ids, targets)
        results.append((logits, loss, backward(cllm_c, cfg, params, cache)))
    for logits, loss, grads in results[1:]:
        np.testing.assert_array_equal(logits, results[0][0])
        assert loss == results[0][1]
        np.testing.assert_array_equal(grads, results[0][2])
