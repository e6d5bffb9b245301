"""The gradient contract and the fixed-order reduction of one step."""

from __future__ import annotations

import numpy as np
import pytest

from cllm_spec.errors import ConfigError, DTypeError, EmptyInputError, ShapeError
from cllm_spec.parallel import (
    GroupResult,
    finish_step,
    reduce_groups,
    validate_grad_output,
)
from cllm_spec.registry import get_backend

BACKEND = get_backend("numpy")


def result(micro: int, group: int, grads, loss_sum: float, n: int) -> GroupResult:
    return GroupResult(micro, group, np.asarray(grads, dtype=np.float32), loss_sum, n)


def test_reduce_groups_is_the_backend_tree_in_group_order():
    rng = np.random.default_rng(0)
    groups = (0, 2, 3, 7, 11)
    results = [
        result(0, g, rng.standard_normal(9) * 10.0 ** rng.uniform(-3, 3), 0.0, 1)
        for g in groups
    ]
    got = reduce_groups(BACKEND, results)
    want = BACKEND.grad_tree_reduce([r.grads for r in results])
    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("groups", [(1, 0), (0, 0), ()])
def test_reduce_groups_refuses_any_other_order(groups):
    with pytest.raises(ConfigError, match="increasing"):
        reduce_groups(BACKEND, [result(0, g, [1.0], 0.0, 1) for g in groups])


def test_reduce_groups_names_the_odd_group():
    a = result(0, 0, [1.0, 2.0], 0.0, 1)
    b = result(0, 5, [1.0], 0.0, 1)
    with pytest.raises(ShapeError, match="group 5"):
        reduce_groups(BACKEND, [a, b])
    c = a._replace(group=6, grads=np.ones(2, dtype=np.float64))
    with pytest.raises(DTypeError, match="group 6"):
        reduce_groups(BACKEND, [a, c])


def test_finish_step_hand_values():
    # Tokens 1 + 1 + 2 = 4; loss sums 1 + 2 + 5 = 8 -> mean loss 8 / 4 = 2.
    # G_0 = [4, 8], G_1 = [0, -4]: G = [4, 4], grad = G / 4 = [1, 1] (exact).
    results = [
        result(0, 0, [1.0, 5.0], 1.0, 1),
        result(0, 3, [3.0, 3.0], 2.0, 1),
        result(1, 1, [0.0, -4.0], 5.0, 2),
    ]
    micro_sums = [np.array([4.0, 8.0], np.float32), np.array([0.0, -4.0], np.float32)]
    grad, loss, n = finish_step(BACKEND, micro_sums, results)
    assert (n, loss) == (4, 2.0)
    assert grad.dtype == np.float32 and grad.tolist() == [1.0, 1.0]


def test_finish_step_without_tokens_is_empty():
    results = [result(0, 0, [0.0], 0.0, 0), result(0, 1, [0.0], 0.0, 0)]
    with pytest.raises(EmptyInputError):
        finish_step(BACKEND, [np.zeros(1, np.float32)], results)


def test_validate_grad_output_accepts_numpy_scalars():
    g = np.ones(3, np.float32)
    grads, loss, n = validate_grad_output((g, np.float32(1.5), np.int64(7)), "f")
    assert grads is g and loss == 1.5 and n == 7
    assert type(loss) is float and type(n) is int


@pytest.mark.parametrize(
    ("out", "error"),
    [
        ([np.ones(3), 1.0, 1], DTypeError),  # a list, not a tuple
        ((np.ones(3), 1.0), DTypeError),
        ((np.ones(3, np.int32), 1.0, 1), DTypeError),
        ((np.ones((3, 1)), 1.0, 1), ShapeError),
        ((np.ones(0), 1.0, 1), EmptyInputError),
        ((np.ones(3), "1", 1), DTypeError),
        ((np.ones(3), True, 1), DTypeError),
        ((np.ones(3), 1.0, 1.0), DTypeError),
        ((np.ones(3), 1.0, -1), ConfigError),
    ],
)
def test_validate_grad_output_rejects(out, error):
    with pytest.raises(error, match="grad_fn"):
        validate_grad_output(out, "grad_fn(group 2)")
