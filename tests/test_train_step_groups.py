"""A worker's groups of one micro-batch in one pass
(:func:`cllm_spec.train.step.group_gradients_many`).

It must return, for each group, exactly what :func:`group_gradients` returns
for it alone (gradient bits, loss, token count), take the one-pass path when
the backend can (the C backend, groups past its matrix-vector row count) and
run the groups one by one otherwise, and raise DivergedError for a
non-finite loss as the calls one by one would. The one-pass math itself is
checked bit for bit by conformance/test_model_groups.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cllm_spec import model_groups
from cllm_spec.errors import DTypeError, IdRangeError, ShapeError
from cllm_spec.model import ModelConfig, checked_params, init_params
from cllm_spec.parallel import split_rows
from cllm_spec.protocols import Batch
from cllm_spec.registry import get_backend
from cllm_spec.train.step import DivergedError, group_gradients, group_gradients_many

CFG = ModelConfig(37, 16, 2, 2, 24, n_hidden=48, activation="gelu")


def _parts(rng: np.random.Generator, rows: int, t: int) -> list[Batch]:
    ids = rng.integers(0, CFG.vocab_size, (rows, t)).astype(np.int32)
    mask = rng.random((rows, t)) < 0.8
    mask[:2] = True  # the first groups count every position (no mask path)
    if rows >= 24:
        mask[-2:] = False  # the last group (2 rows) counts nothing
    batch = Batch(ids, np.roll(ids, -1, axis=1), mask)
    return [p for p in split_rows(batch, 12) if p is not None]


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many groups each one-pass call computed."""
    calls: list[int] = []
    real = model_groups.group_losses_and_gradients

    def counted(*args: Any) -> Any:
        calls.append(len(args[-1]))
        return real(*args)

    monkeypatch.setattr(model_groups, "group_losses_and_gradients", counted)
    return calls


def _backend(name: str) -> Any:
    if name == "c":
        pytest.importorskip("cllm_c", reason="the C extension is not built")
    return get_backend(name)


def _same(one: list[Any], many: list[Any]) -> None:
    assert len(one) == len(many)
    for i, ((g1, l1, n1), (g2, l2, n2)) in enumerate(zip(one, many, strict=True)):
        assert (l1, n1) == (l2, n2), i
        assert g1.dtype == g2.dtype and g1.tobytes() == g2.tobytes(), i


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_pass_gives_each_group_its_own_bits(spy, dtype):
    backend = _backend("c")
    rng = np.random.default_rng(3)
    params = checked_params(backend, CFG, init_params(CFG, rng, dtype))
    parts = _parts(rng, 26, 20)
    one = [group_gradients(backend, CFG, params, p) for p in parts]
    many = group_gradients_many(backend, CFG, params, parts)
    _same(one, many)
    assert spy == [11]  # one pass over the 11 groups that count a token
    assert many[-1][2] == 0 and not np.any(many[-1][0])


@pytest.mark.parametrize(
    ("name", "rows", "t"),
    [
        ("c", 12, 8),  # 8 token rows a group: the C linear's matrix-vector path
        ("numpy", 24, 20),  # a backend without groups=
    ],
)
def test_groups_that_cannot_share_a_pass_run_one_by_one(spy, name, rows, t):
    backend = _backend(name)
    rng = np.random.default_rng(rows + t)
    params = init_params(CFG, rng, np.float32)
    parts = _parts(rng, rows, t)
    _same(
        [group_gradients(backend, CFG, params, p) for p in parts],
        group_gradients_many(backend, CFG, params, parts),
    )
    assert spy == []


def test_a_non_finite_loss_is_a_diverged_error(monkeypatch):
    backend = _backend("c")
    rng = np.random.default_rng(6)
    params = init_params(CFG, rng, np.float32)
    parts = _parts(rng, 24, 20)
    real = model_groups.group_losses_and_gradients

    def second_diverges(*args: Any) -> Any:
        out = real(*args)
        out[1] = (float("inf"), out[1][1])
        return out

    monkeypatch.setattr(model_groups, "group_losses_and_gradients", second_diverges)
    with pytest.raises(DivergedError, match="loss inf"):
        group_gradients_many(backend, CFG, params, parts)


def test_malformed_groups_get_the_typed_errors_of_one_by_one():
    backend = _backend("c")
    rng = np.random.default_rng(7)
    params = init_params(CFG, rng, np.float32)
    parts = _parts(rng, 24, 20)
    short = parts[1]._replace(targets=parts[1].targets[:, :-1])  # (2, 19)
    flat = parts[2]._replace(input_ids=parts[2].input_ids.ravel())  # 1-D ids
    for bad in (short, flat):
        with pytest.raises((ShapeError, DTypeError)) as alone:
            group_gradients(backend, CFG, params, bad)
        with pytest.raises(type(alone.value)) as together:
            group_gradients_many(backend, CFG, params, [parts[0], bad, *parts[3:]])
        assert str(together.value) == str(alone.value)


def test_a_target_out_of_range_is_refused_before_the_shared_pass(spy):
    backend = _backend("c")
    rng = np.random.default_rng(8)
    params = init_params(CFG, rng, np.float32)
    parts = _parts(rng, 24, 20)
    targets = parts[0].targets.copy()  # group 0 counts every position
    targets[0, 3] = CFG.vocab_size
    bad = parts[0]._replace(targets=targets)
    with pytest.raises(IdRangeError) as alone:
        group_gradients(backend, CFG, params, bad)
    with pytest.raises(IdRangeError, match="targets"):
        group_gradients_many(backend, CFG, params, [bad, *parts[1:]])
    assert "targets" in str(alone.value)
    assert spy == [11]  # the shared pass was asked, and refused the call
