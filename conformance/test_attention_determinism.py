"""Conformance of attention's calls as pure functions.

Spec: ``cllm_spec.attention``. Repeated calls are bitwise identical (test 15,
consistency, of the original ``tests/unit/test_attention.c``), inputs are left
unchanged, and strided views give the values of their contiguous copies.
"""

from __future__ import annotations

import numpy as np

from conformance.attention_helpers import good_mha, qkv_inputs
from conformance.strategies import normal


def test_seed15_repeated_calls_are_bitwise_identical(backend, dtype, rng, check):
    q, k, v = qkv_inputs(rng, (2, 2, 5, 3), 5, dtype)
    mask = rng.random((2, 5)) < 0.8
    dout = normal(rng, q.shape, dtype)
    runs = []
    for _ in range(2):
        out, cache = backend.attention_forward(q, k, v, key_padding_mask=mask)
        runs.append((out, *backend.attention_backward(dout, cache)))
    for a, b in zip(*runs, strict=True):
        check.exact(a, b, output="attention_determinism")
    x, *params = good_mha(dtype)
    mruns = []
    for _ in range(2):
        y, mcache, _ = backend.mha_forward(x, *params, n_head=3)
        mruns.append((y, *backend.mha_backward(y, mcache)))
    for a, b in zip(*mruns, strict=True):
        check.exact(a, b, output="mha_determinism")


def test_attention_does_not_mutate_its_inputs(backend, dtype, rng, check):
    q, k, v = qkv_inputs(rng, (2, 2, 4, 3), 4, dtype)
    mask = np.array([[True, True, False, True], [True] * 4])
    dout = normal(rng, q.shape, dtype)
    originals = [a.copy() for a in (q, k, v, mask, dout)]
    _, cache = backend.attention_forward(q, k, v, key_padding_mask=mask)
    backend.attention_backward(dout, cache)
    for a, b in zip((q, k, v, mask, dout), originals, strict=True):
        check.exact(a, b, output="inputs_unchanged")


def test_mha_does_not_mutate_its_inputs(backend, dtype, rng, check):
    args = good_mha(dtype)
    dy = normal(rng, args[0].shape, dtype)
    originals = [a.copy() for a in (*args, dy)]
    cache = backend.kv_cache_new(2, 2, 3, 3, dtype)
    backend.mha_forward(*args, n_head=2, kv_cache=cache)
    _, mcache, _ = backend.mha_forward(*args, n_head=2)
    backend.mha_backward(dy, mcache)
    for a, b in zip((*args, dy), originals, strict=True):
        check.exact(a, b, output="inputs_unchanged")


def test_non_contiguous_inputs_give_the_same_result(backend, dtype, rng, check):
    # q, k, v as strided views of a (B, T, NH, HS) array, the layout a head split makes
    base = normal(rng, (3, 2, 5, 2, 4), dtype)
    q, k, v = (base[i].transpose(0, 2, 1, 3) for i in range(3))
    out, _ = backend.attention_forward(q, k, v)
    dense, _ = backend.attention_forward(*(np.ascontiguousarray(a) for a in (q, k, v)))
    check.close(out, dense.astype(np.float64), output="non_contiguous", dtype=dtype)
