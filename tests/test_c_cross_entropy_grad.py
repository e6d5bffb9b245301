"""The C backend's cross-entropy forward that writes the logits' gradient.

The model kernels' ``cross_entropy_forward`` (cllm_c/model.py) has the
forward write ``d loss / d logits`` for a ``dloss`` of 1 in place of the
probabilities, each row while it is in the cache
(``cllm_cross_entropy_forward_grad``), and ``cross_entropy_backward`` hand it
on. It is claimed to give the bits of the forward followed by the backward;
these tests hold it to that at every SIMD level and 1 and 2 threads, with
ignored rows, both reductions the model uses, label smoothing and in place.
"""

from __future__ import annotations

import numpy as np
import pytest

cllm_c = pytest.importorskip("cllm_c", reason="the C extension is not built")

from cllm_c import _lib, model_kernels  # noqa: E402
from cllm_c.losses import (  # noqa: E402
    GradientCache,
    _cross_entropy,
    _cross_entropy_backward,
)

from cllm_spec.errors import ConfigError  # noqa: E402


def _problem(dtype: type, n: int = 70, v: int = 261) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n + v)
    logits = (3.0 * rng.standard_normal((n, v))).astype(dtype)
    targets = rng.integers(0, v, n)
    targets[[0, 5, n - 1]] = -100  # ignored rows: a zero gradient
    return logits, targets


@pytest.mark.parametrize("reduction", ("mean", "sum"))
@pytest.mark.parametrize("smoothing", (0.0, 0.1))
@pytest.mark.parametrize("in_place", (False, True))
@pytest.mark.parametrize("dtype", (np.float32, np.float64))
def test_the_forwards_gradient_is_the_bits_of_forward_then_backward(
    reduction, smoothing, in_place, dtype, simd_levels
):
    logits, targets = _problem(dtype)
    for level in simd_levels:
        _lib.set_simd(level)
        for threads in (1, 2):
            cllm_c.set_num_threads(threads)
            at = f"{level}, {threads} thread(s)"
            z = logits.copy()
            loss, cache = _cross_entropy(z, targets, -100, smoothing, reduction)
            want = _cross_entropy_backward(np.ones((), dtype), cache)
            z2 = logits.copy()
            loss2, cache2 = _cross_entropy(
                z2, targets, -100, smoothing, reduction, in_place=in_place, grad=True
            )
            assert isinstance(cache2, GradientCache)
            assert loss2.tobytes() == loss.tobytes(), at
            assert cache2.weight.tobytes() == cache.weight.tobytes(), at
            assert cache2.probs.tobytes() == want.tobytes(), f"dlogits ({at})"
            assert (cache2.probs is z2) == in_place
            assert not np.any(cache2.probs[[0, 5, 69]]), "ignored rows"


def test_the_model_kernels_hand_the_gradient_on_for_dloss_one_only():
    logits, targets = _problem(np.float32, 12, 40)
    _, cache = model_kernels.cross_entropy_forward(logits.copy(), targets)
    got = model_kernels.cross_entropy_backward(np.ones((), np.float32), cache)
    assert got is cache.probs
    with pytest.raises(ConfigError, match="dloss = 1"):
        model_kernels.cross_entropy_backward(np.float32(2.0), cache)
    with pytest.raises(ConfigError, match="dloss = 1"):
        model_kernels.cross_entropy_backward(np.ones(12, np.float32), cache)
