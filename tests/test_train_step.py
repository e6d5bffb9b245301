"""One optimizer step: gradient accumulation, clipping, the optimizer by name,
divergence detection, and the config checks that span sections."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cllm_spec import checks
from cllm_spec.errors import ConfigError, NonFiniteError
from cllm_spec.model import (
    ModelConfig,
    backward,
    checked_params,
    forward,
    init_params,
)
from cllm_spec.optim import init_adam_state, init_sgd_state
from cllm_spec.parallel import N_GROUPS, split_rows
from cllm_spec.registry import get_backend
from cllm_spec.schedules import ScheduleConfig, lr_at
from cllm_spec.tolerances import tolerance
from cllm_spec.train.config import load_config
from cllm_spec.train.prepare import BatchStream
from cllm_spec.train.state import frozen_field_changes, schedule_config
from cllm_spec.train.step import (
    DivergedError,
    apply_update,
    compute_step_gradients,
    group_gradients,
    group_step_gradients,
)

BACKEND = get_backend("numpy")
CFG = ModelConfig(vocab_size=11, n_embd=8, n_layer=1, n_head=2, block_size=8)


def params(dtype=np.float64):
    return init_params(CFG, np.random.default_rng(0), dtype)


def tokens(n=400):
    return np.random.default_rng(1).integers(0, CFG.vocab_size, n).astype(np.uint32)


def test_accumulating_two_batches_of_b_equals_one_batch_of_2b():
    # The epoch's window order does not depend on B, so batch j of size 2B holds
    # exactly micro-batches 2j and 2j+1 of size B.
    data = tokens()
    small = BatchStream(data, 4, 8, seed=5).take(2)
    (big,) = BatchStream(data, 8, 8, seed=5).take(1)
    np.testing.assert_array_equal(
        np.concatenate([b.input_ids for b in small]), big.input_ids
    )
    p = params()
    loss_acc, grad_acc = compute_step_gradients(BACKEND, CFG, p, small)
    loss_big, grad_big = compute_step_gradients(BACKEND, CFG, p, [big])
    # Equal up to float64 rounding: the two sum the same terms in other orders.
    assert loss_acc == pytest.approx(loss_big, rel=1e-13)
    np.testing.assert_allclose(grad_acc, grad_big, rtol=1e-10, atol=1e-15)
    assert np.abs(grad_big).max() > 1e-3  # a real gradient, not zeros


def test_one_micro_batch_is_the_plain_forward_backward():
    (batch,) = BatchStream(tokens(), 4, 8, seed=5).take(1)
    p = params(np.float32)
    loss, grads = compute_step_gradients(BACKEND, CFG, p, [batch])
    _, want_loss, cache = forward(BACKEND, CFG, p, batch.input_ids, batch.targets)
    assert loss == want_loss
    np.testing.assert_array_equal(grads, backward(BACKEND, CFG, p, cache))


def test_checked_params_give_the_same_step_and_skip_only_the_nan_scan(monkeypatch):
    (batch,) = BatchStream(tokens(), 4, 8, seed=5).take(1)
    p = params(np.float32)
    checked = checked_params(BACKEND, CFG, p)
    for plain, fast in zip(
        group_gradients(BACKEND, CFG, p, batch),
        group_gradients(BACKEND, CFG, checked, batch),
        strict=True,
    ):
        np.testing.assert_array_equal(plain, fast)
    bad = p.copy()
    bad[3] = np.nan
    with pytest.raises(NonFiniteError):
        checked_params(BACKEND, CFG, bad)
    with pytest.raises(NonFiniteError):
        forward(BACKEND, CFG, bad, batch.input_ids, batch.targets)
    # the finite scan is what a CheckedParams skips; shapes are still checked
    scans = []
    real = checks.expect_finite
    monkeypatch.setattr(
        checks, "expect_finite", lambda *a: scans.append(a[0]) or real(*a)
    )
    forward(BACKEND, CFG, checked, batch.input_ids, batch.targets)
    assert "params" not in scans
    other = ModelConfig(vocab_size=11, n_embd=8, n_layer=2, n_head=2, block_size=8)
    with pytest.raises(ConfigError):
        forward(BACKEND, other, checked, batch.input_ids, batch.targets)


def run_config(*sets):
    return load_config(None, ["optim.name=sgd", "optim.weight_decay=0", *sets])


def test_clipping_is_applied_and_the_norm_before_it_reported():
    p = np.zeros(4)
    g = np.array([3.0, 0.0, 4.0, 0.0])  # ||g|| = 5
    cfg = run_config("train.clip_norm=1.0")
    new, state, norm = apply_update(BACKEND, cfg, p, g, init_sgd_state(p), lr=1.0)
    assert norm == pytest.approx(5.0)
    # sgd, lr 1: the update is the clipped gradient, of norm 1 (PyTorch's +1e-6)
    np.testing.assert_allclose(-new, g / (5.0 + 1e-6), rtol=1e-12)
    assert state.step == 1


def test_clip_norm_zero_disables_clipping():
    p = np.zeros(4)
    g = np.array([3.0, 0.0, 4.0, 0.0])
    cfg = run_config("train.clip_norm=0")
    new, _, norm = apply_update(BACKEND, cfg, p, g, init_sgd_state(p), lr=0.5)
    assert norm == pytest.approx(5.0)
    np.testing.assert_array_equal(new, -0.5 * g)


def test_optimizer_is_chosen_by_name_with_its_hyperparameters():
    p = np.ones(3)
    g = np.array([0.5, -1.0, 2.0])
    cfg = load_config(
        None, ["optim.name=adamw", "optim.weight_decay=0.1", "train.clip_norm=0"]
    )
    new, state, _ = apply_update(BACKEND, cfg, p, g, init_adam_state(p), lr=0.01)
    # AdamW's first step: p * (1 - lr wd) - lr * sign(g) (bias corrections cancel)
    want = p * (1 - 0.01 * 0.1) - 0.01 * g / (np.abs(g) + 1e-8)
    np.testing.assert_allclose(new, want, rtol=1e-12)
    assert state.step == 1


def test_non_finite_gradient_norm_diverges():
    p = np.zeros(2)
    with pytest.raises(DivergedError, match="gradient norm"):
        apply_update(
            BACKEND, run_config(), p, np.array([np.inf, 0.0]), init_sgd_state(p), 0.1
        )


def test_overflowing_update_diverges_without_returning_it():
    p = np.array([3e38, 0.0], dtype=np.float32)
    g = np.array([-1.0, 0.0], dtype=np.float32)
    cfg = run_config("train.clip_norm=0")
    with (
        np.errstate(over="ignore"),
        pytest.raises(DivergedError, match="parameters NaN or inf"),
    ):
        apply_update(BACKEND, cfg, p, g, init_sgd_state(p), lr=1e38)


def test_schedule_follows_the_config():
    cfg = load_config(
        None,
        [
            "optim.lr=0.01",
            "schedule.name=cosine",
            "schedule.warmup_steps=3",
            "schedule.min_lr=0.001",
            "train.steps=13",
        ],
    )
    want = ScheduleConfig("cosine", 0.01, 3, 13, 0.001, 100, 0.5)
    assert schedule_config(cfg) == want
    assert lr_at(0, schedule_config(cfg)) == pytest.approx(0.01 / 3)
    # halfway through the decay (a = 5 of A = 10): the mean of peak and floor
    assert lr_at(8, schedule_config(cfg)) == pytest.approx(0.0055)
    assert lr_at(13, schedule_config(cfg)) == 0.001


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["train.steps=5", "schedule.warmup_steps=5"], "schedule.warmup_steps"),
        (["optim.lr=1e-4", "schedule.min_lr=1e-3"], "schedule.min_lr"),
        (["optim.name=sgd", "optim.nesterov=true"], "optim.nesterov"),
    ],
)
def test_cross_section_checks_name_the_field(overrides, field):
    with pytest.raises(ConfigError) as info:
        schedule_config(load_config(None, overrides))
    assert info.value.message.startswith(field + ":")


def test_constant_schedule_may_warm_up_past_the_last_step():
    cfg = load_config(
        None, ["schedule.name=constant", "schedule.warmup_steps=50", "train.steps=5"]
    )
    assert math.isclose(lr_at(4, schedule_config(cfg)), cfg.optim.lr * 5 / 50)


def test_frozen_fields_on_resume():
    old = load_config(None, []).to_dict()
    new = load_config(None, ["model.n_embd=64", "optim.lr=0.1", "train.steps=70"])
    assert frozen_field_changes(old, new) == [("model.n_embd", 128, 64)]
    same = load_config(None, ["train.backend=numpy", "train.dtype=float64"])
    assert frozen_field_changes(old, same) == []


def test_group_split_of_a_padded_batch_equals_the_whole_batch_gradient():
    """Padding spread unevenly over the 12 groups (one group all padding): the
    group-split step weights each group by its real tokens, so it equals the
    gradient of the whole batch's masked mean."""
    b, t = 14, 8  # groups 0-1 hold two rows, groups 2-11 one row each
    (batch,) = BatchStream(tokens(), b, t, seed=5).take(1)
    keep = np.array([t, 3, 8, 1, 5, 2, 7, 0, 4, 6, 8, 2, 1, 3])  # real tokens per row
    mask = (np.arange(t)[None, :] < keep[:, None]).astype(batch.mask.dtype)
    padded = batch._replace(mask=mask)
    counts = [int(m.sum()) for m in split_rows(mask, N_GROUPS)]
    assert counts == [11, 9, 5, 2, 7, 0, 4, 6, 8, 2, 1, 3]  # uneven, one empty
    p = params()
    loss_g, grad_g = group_step_gradients(BACKEND, CFG, p, [padded])
    loss_w, grad_w = compute_step_gradients(BACKEND, CFG, p, [padded])
    tol = tolerance("train", "grad", np.float64)
    assert loss_g == pytest.approx(loss_w, rel=tol.rtol)
    np.testing.assert_allclose(grad_g, grad_w, rtol=tol.rtol, atol=tol.atol)
    # The weights matter: the plain mean of the group means is another number.
    parts = [g for g in split_rows(padded, N_GROUPS) if g is not None and g.mask.any()]
    unweighted = np.mean(
        [compute_step_gradients(BACKEND, CFG, p, [g])[0] for g in parts]
    )
    assert abs(unweighted - loss_w) > 1e3 * tol.rtol * abs(loss_w)
