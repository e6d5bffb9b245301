"""Conformance of the optional grouped pass (:mod:`cllm_spec.model_groups`).

A backend whose model kernels take ``groups=`` lets the trainer run several
groups of a step in one forward and backward. Each group must come out with
the loss and gradient of its own ``forward_loss`` and ``backward``, bit for
bit: that is what keeps any number of workers or ranks on the same bits, so
tolerances do not apply here. A backend without the capability is skipped
(the trainer then runs the groups one by one).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cllm_spec.model import (
    IGNORE_INDEX,
    ModelConfig,
    backward,
    forward_loss,
    init_params,
)
from cllm_spec.model_groups import group_losses_and_gradients, supports

#: (config, rows of each group, T): tied and untied heads, every activation,
#: groups of unequal sizes, one sequence per group
CASES = [
    (ModelConfig(29, 16, 2, 2, 24, n_hidden=40, activation="gelu"), (2, 3, 1), 20),
    (
        ModelConfig(41, 12, 1, 3, 32, activation="relu", tie_embeddings=False),
        (1, 1, 1, 1),
        32,
    ),
    (ModelConfig(17, 8, 2, 1, 18, activation="gelu_tanh"), (4, 2), 18),
]


def _case(rng: np.random.Generator, cfg: ModelConfig, rows: tuple[int, ...], t: int):
    b = sum(rows)
    ids = rng.integers(0, cfg.vocab_size, (b, t))
    targets = rng.integers(0, cfg.vocab_size, (b, t))
    targets[rng.random((b, t)) < 0.2] = IGNORE_INDEX  # masked positions
    bounds = np.cumsum([0, *rows])
    groups = [(int(bounds[i]), int(bounds[i + 1])) for i in range(len(rows))]
    return ids, targets, groups


def _own(backend: Any, cfg, params, ids, targets) -> tuple[float, np.ndarray]:
    loss, cache = forward_loss(backend, cfg, params, ids, targets, loss_reduction="sum")
    return loss, backward(backend, cfg, params, cache)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_groups_in_one_pass_get_the_bits_of_their_own_passes(backend, dtype, rng, case):
    cfg, rows, t = CASES[case]
    if not supports(backend, rows, t):
        pytest.skip(f"backend {backend.name} runs no groups together (optional)")
    params = init_params(cfg, rng, dtype)
    ids, targets, groups = _case(rng, cfg, rows, t)
    together = group_losses_and_gradients(backend, cfg, params, ids, targets, groups)
    assert len(together) == len(groups)
    for i, ((b0, b1), (loss, grad)) in enumerate(zip(groups, together, strict=True)):
        want_loss, want_grad = _own(backend, cfg, params, ids[b0:b1], targets[b0:b1])
        assert loss == want_loss, f"group {i}: loss {loss} != {want_loss}"
        assert grad.dtype == want_grad.dtype and grad.shape == want_grad.shape
        bad = np.flatnonzero(grad.view(np.uint8) != want_grad.view(np.uint8))
        assert bad.size == 0, (
            f"group {i}: {bad.size} gradient bytes differ from its own pass"
        )


def test_a_group_whose_every_target_is_ignored_has_loss_and_gradient_zero(
    backend, dtype, rng
):
    cfg, rows, t = CASES[0]
    if not supports(backend, rows, t):
        pytest.skip(f"backend {backend.name} runs no groups together (optional)")
    params = init_params(cfg, rng, dtype)
    ids, targets, groups = _case(rng, cfg, rows, t)
    b0, b1 = groups[1]
    targets[b0:b1] = IGNORE_INDEX
    together = group_losses_and_gradients(backend, cfg, params, ids, targets, groups)
    loss, grad = together[1]
    assert loss == 0.0
    assert not np.any(grad)
    want_loss, want_grad = _own(backend, cfg, params, ids[:b0], targets[:b0])
    assert together[0][0] == want_loss
    assert together[0][1].tobytes() == want_grad.tobytes()
