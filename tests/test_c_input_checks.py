"""Bad input never reaches the C backend's kernels, and C checks on its own.

- the wrapper raises the spec's typed error before any kernel is called, and
  writes into no read-only buffer even when called unvalidated;
- C checks sizes and ids again on its own and reports a status, never
  crashes;
- the validation's finite scans go through the backend's own scan.

The whole module is skipped when the extension is not built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

cllm_c = pytest.importorskip("cllm_c", reason="the C extension is not built")

from cllm_c import _lib  # noqa: E402

from cllm_spec.errors import (  # noqa: E402
    DTypeError,
    EmptyInputError,
    IdRangeError,
    NonFiniteError,
    ReadOnlyError,
    ShapeError,
)
from cllm_spec.protocols import AdamState, KVCache, LinearCache  # noqa: E402
from tests.c_backend_helpers import F32  # noqa: E402

# --------------------------------------------- bad input never reaches C ---
REAL_LIB = _lib.lib


class _Tripwire:
    """Stands in for the compiled library: any kernel call fails the test.

    The finite scan is let through: it is part of the validation (it reads
    the array the wrapper's checks found well-formed, and only says whether a
    NaN or inf is in it), so it runs before a non-finite input is refused.
    """

    def __getattr__(self, name: str) -> Any:
        if name.startswith("CLLM_") or name.startswith("cllm_all_finite"):
            return getattr(REAL_LIB, name)
        raise AssertionError(f"bad input reached C: lib.{name} was called")


def _bytes_buffers(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Two float32 arrays over the memory of immutable ``bytes`` objects."""
    n = int(np.prod(shape)) * 4
    return tuple(np.frombuffer(bytes(n), F32).reshape(shape) for _ in range(2))


BAD_CALLS: list[tuple[str, Callable[[], Any], type[Exception]]] = [
    (
        "linear x/w mismatch",
        lambda: cllm_c.linear_forward(np.ones((2, 3), F32), np.ones((4, 5), F32), None),
        ShapeError,
    ),
    (
        "linear int x",
        lambda: cllm_c.linear_forward(
            np.ones((2, 3), np.int32), np.ones((4, 3), F32), None
        ),
        DTypeError,
    ),
    (
        "layernorm empty",
        lambda: cllm_c.layernorm_forward(
            np.ones((0, 3), F32), np.ones(3, F32), np.zeros(3, F32)
        ),
        EmptyInputError,
    ),
    (
        "cross-entropy target out of range",
        lambda: cllm_c.cross_entropy_forward(
            np.zeros((2, 5), F32), np.array([1, 5], np.int64)
        ),
        IdRangeError,
    ),
    (
        "cross-entropy NaN logits",
        lambda: cllm_c.cross_entropy_forward(
            np.array([[0.0, np.nan]], F32), np.array([1], np.int64)
        ),
        NonFiniteError,
    ),
    (
        "embedding negative id",
        lambda: cllm_c.embedding_forward(
            np.array([[0, -1]]), np.ones((4, 2), F32), np.ones((3, 2), F32)
        ),
        IdRangeError,
    ),
    (
        "attention rank",
        lambda: cllm_c.attention_forward(
            np.ones((2, 3, 4), F32), np.ones((2, 3, 4), F32), np.ones((2, 3, 4), F32)
        ),
        ShapeError,
    ),
    (
        "mse shapes",
        lambda: cllm_c.mse_forward(np.ones(3, F32), np.ones(4, F32)),
        ShapeError,
    ),
    # (a non-finite float32 optimizer input does reach C: the step kernel
    # scans its inputs as it reads them; tests/test_c_optim_finite.py)
    (
        "adam non-finite float64 grads",
        lambda: cllm_c.adam_step(
            np.ones(3, np.float64),
            np.array([1.0, np.inf, 0.0]),
            AdamState(*(np.zeros(3) for _ in range(3)), 0),
        ),
        NonFiniteError,
    ),
    (
        "kv append into bytes",
        lambda: cllm_c.kv_cache_append(
            KVCache(*_bytes_buffers((1, 2, 4, 3)), 0), *[np.ones((1, 2, 1, 3), F32)] * 2
        ),
        ReadOnlyError,
    ),
    (
        "mha through a read-only cache",
        lambda: cllm_c.mha_forward(
            np.ones((1, 2, 6), F32),
            np.ones((18, 6), F32),
            None,
            np.ones((6, 6), F32),
            None,
            n_head=2,
            kv_cache=KVCache(*_bytes_buffers((1, 2, 4, 3)), 1),
        ),  # fmt: skip
        ReadOnlyError,
    ),
    (
        "tree reduce lengths",
        lambda: cllm_c.grad_tree_reduce([np.ones(3, F32), np.ones(4, F32)]),
        ShapeError,
    ),
]


@pytest.mark.parametrize(
    ("call", "error"),
    [(c, e) for _, c, e in BAD_CALLS],
    ids=[name for name, _, _ in BAD_CALLS],
)
def test_bad_input_never_reaches_c(monkeypatch, call, error):
    # every wrapper reaches the kernels through cllm_c._lib.lib
    monkeypatch.setattr("cllm_c._lib.lib", _Tripwire())
    with pytest.raises(error):
        call()


def test_c_writes_into_no_read_only_buffer_even_unvalidated():
    # _append is the in-place write behind kv_cache_append and mha_forward; even
    # called without the spec's checks it refuses memory it must not write
    k_buf, v_buf = _bytes_buffers((1, 2, 4, 3))
    k = np.ones((1, 2, 1, 3), F32)
    with pytest.raises(ReadOnlyError):
        cllm_c.attention._append(KVCache(k_buf, v_buf, 0), k, k)
    assert not k_buf.any() and not v_buf.any()
    with pytest.raises(ReadOnlyError):
        _lib.out_ptr("x", np.frombuffer(bytes(8), F32))
    writeable = np.zeros(2, F32)
    assert _lib.ffi.sizeof(_lib.out_ptr("x", writeable)) == 8


def test_inconsistent_cache_is_caught_before_c():
    # The spec's validator compares dy with the cache's x and w[0] only; x's last
    # dimension disagreeing with w would make C read past dy. The wrapper stops it.
    cache = LinearCache(np.ones((2, 3), F32), np.ones((4, 2), F32), True)
    with pytest.raises(ShapeError):
        cllm_c.linear_backward(np.ones((2, 4), F32), cache)
    mixed = LinearCache(np.ones((2, 3), F32), np.ones((4, 3), np.float64), False)
    with pytest.raises(DTypeError):
        cllm_c.linear_backward(np.ones((2, 4), F32), mixed)


# -------------------------------------------------- C checks on its own ----
def test_c_rejects_out_of_range_ids_itself():
    ids = np.array([0, 7], dtype=np.int64)
    wte, wpe = np.ones((4, 2), F32), np.ones((3, 2), F32)
    x = np.empty((1, 2, 2), F32)
    lib, ffi = _lib.lib, _lib.ffi
    status = lib.cllm_embedding_forward(
        ffi.from_buffer("int64_t[]", ids), _lib.ptr(wte), _lib.ptr(wpe),
        1, 2, 2, 4, 3, 0, _lib.ptr(x),
    )  # fmt: skip
    assert status == lib.CLLM_ERR_ID_RANGE
    with pytest.raises(IdRangeError):
        _lib.check(status, "embedding")


def test_c_rejects_bad_sizes_with_a_status():
    lib, ffi = _lib.lib, _lib.ffi
    a = np.ones(4, F32)
    status = lib.cllm_sgemm(0, 0, 2, 2, -1, _lib.ptr(a), 2, _lib.ptr(a), 2,
                            _lib.ptr(a), 2, 0, ffi.NULL)  # fmt: skip
    assert status == lib.CLLM_ERR_ARG
    assert lib.cllm_set_num_threads(0) == lib.CLLM_ERR_ARG
    text = ffi.string(lib.cllm_strerror(lib.CLLM_ERR_ID_RANGE)).decode()
    assert "range" in text


def test_the_c_backends_scan_serves_its_validation(monkeypatch):
    # the step's NaN checks of params, gradients and Adam state go through the
    # backend's all_finite when it has one (else NumPy's sum, several times
    # slower on large buffers)
    import cllm_c.checks
    import cllm_c.optim

    from cllm_spec.model import ModelConfig, init_params, validate_params
    from cllm_spec.protocols import AdamState
    from cllm_spec.registry import get_backend

    seen = []
    real = cllm_c.checks.all_finite

    def spy(x):
        seen.append(x.size)
        return real(x)

    c = get_backend("c")
    monkeypatch.setattr(c, "all_finite", spy)
    monkeypatch.setattr(cllm_c.optim, "all_finite", spy)
    cfg = ModelConfig(vocab_size=11, n_embd=8, n_layer=1, n_head=2, block_size=4)
    p = init_params(cfg, np.random.default_rng(0), np.float32)
    validate_params(c, cfg, p)
    assert seen == [p.size]
    state = AdamState(np.zeros_like(p), np.zeros_like(p), np.zeros_like(p), 0)
    c.adamw_step(p, np.ones_like(p), state, lr=0.1)
    assert seen[1:] == []  # float32: the step kernel scans what it reads
    p64 = p.astype(np.float64)
    state64 = AdamState(*(np.zeros_like(p64) for _ in range(3)), 0)
    c.adamw_step(p64, np.ones_like(p64), state64, lr=0.1)
    assert seen[1:] == [p.size] * 5  # params, grads, exp_avg, exp_avg_sq, max
