"""Learning-rate schedules (``cllm_spec.schedules``): value tables worked out by
hand, the warmup rule, monotone regions, purity and validation."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cllm_spec.errors import ConfigError
from cllm_spec.schedules import (
    ScheduleConfig,
    constant,
    cosine,
    linear_decay,
    linear_warmup,
    lr_at,
    step_decay,
)

REL = 1e-12  # the tables below are decimal values of closed forms


def approx(value: float) -> object:
    return pytest.approx(value, rel=REL, abs=0.0)


# ------------------------------------------------------------ value tables ---
WARMUP = ScheduleConfig("constant", lr=1e-3, warmup_steps=100)
LINEAR = ScheduleConfig("linear", lr=1e-3, total_steps=1000, min_lr=1e-4)
COSINE = ScheduleConfig("cosine", lr=1e-3, total_steps=1000, min_lr=1e-4)
STEP = ScheduleConfig("step", lr=1e-3, step_size=100, gamma=0.1, min_lr=1e-5)


@pytest.mark.parametrize(
    ("cfg", "step", "expected"),
    [
        # warmup: step s of W = 100 uses 1e-3 * (s + 1) / 100, then the full lr
        (WARMUP, 0, 1e-5),
        (WARMUP, 49, 5e-4),
        (WARMUP, 98, 9.9e-4),
        (WARMUP, 99, 1e-3),
        (WARMUP, 100, 1e-3),
        (WARMUP, 10_000, 1e-3),
        # linear from 1e-3 to 1e-4 over 1000: 1e-3 - 9e-4 * s / 1000
        (LINEAR, 0, 1e-3),
        (LINEAR, 250, 7.75e-4),
        (LINEAR, 500, 5.5e-4),
        (LINEAR, 999, 1.009e-4),
        (LINEAR, 1000, 1e-4),
        (LINEAR, 5000, 1e-4),
        # cosine: 1e-4 + 9e-4 * (1 + cos(pi s / 1000)) / 2, cos(pi/4) = .70710678
        (COSINE, 0, 1e-3),
        (COSINE, 250, 1e-4 + 4.5e-4 * (1 + math.sqrt(0.5))),  # 8.68198e-4
        (COSINE, 500, 5.5e-4),  # the midpoint is (lr + min_lr) / 2
        (COSINE, 750, 1e-4 + 4.5e-4 * (1 - math.sqrt(0.5))),  # 2.31802e-4
        (COSINE, 1000, 1e-4),
        (COSINE, 1234, 1e-4),
        # step: 1e-3 * .1 ** (s // 100), floored at 1e-5
        (STEP, 0, 1e-3),
        (STEP, 99, 1e-3),
        (STEP, 100, 1e-4),
        (STEP, 199, 1e-4),
        (STEP, 200, 1e-5),
        (STEP, 300, 1e-5),  # 1e-6 without the floor
    ],
)
def test_value_table(cfg, step, expected):
    assert lr_at(step, cfg) == approx(expected)


def test_step_decay_without_floor_keeps_decaying():
    cfg = ScheduleConfig("step", lr=1e-3, step_size=100)
    assert lr_at(300, cfg) == approx(1e-6)
    assert lr_at(1000, cfg) == approx(1e-13)


@pytest.mark.parametrize(
    ("name", "step", "expected"),
    [
        # warmup 10 steps to 2e-3, then each schedule over A = 110 - 10 = 100
        ("constant", 10, 2e-3),
        ("linear", 10, 2e-3),  # a = 0: the full lr right after warmup
        ("linear", 60, 1e-3),  # a = 50: 2e-3 - (2e-3 - 0) * .5
        ("linear", 110, 0.0),
        ("cosine", 10, 2e-3),
        ("cosine", 60, 1e-3),
        ("cosine", 110, 0.0),
        ("step", 10, 2e-3),
        ("step", 59, 2e-3),  # a = 49 < step_size 50
        ("step", 60, 1e-3),  # a = 50: one decay by gamma .5
        ("step", 110, 5e-4),
    ],
)
def test_schedules_start_after_warmup(name, step, expected):
    cfg = ScheduleConfig(
        name, lr=2e-3, warmup_steps=10, total_steps=110, step_size=50, gamma=0.5
    )
    assert lr_at(step, cfg) == pytest.approx(expected, rel=REL, abs=1e-18)
    assert lr_at(4, cfg) == approx(1e-3)  # warmup: 2e-3 * 5 / 10


# ------------------------------------------------------------ warmup rule ---
@pytest.mark.parametrize("warmup", [1, 2, 7, 100, 1000])
def test_warmup_step_s_uses_lr_times_s_plus_1_over_w(warmup):
    # The original returned lr * s / W (0 on the first step) and, inside its
    # optimizer, was one step late until it was patched; both fail here.
    cfg = ScheduleConfig("constant", lr=3e-4, warmup_steps=warmup)
    for s in range(warmup):
        assert lr_at(s, cfg) == approx(3e-4 * (s + 1) / warmup)
    assert lr_at(0, cfg) > 0.0
    assert lr_at(warmup - 1, cfg) == 3e-4  # exactly the peak on the last one


def test_no_warmup_starts_at_full_lr():
    for name in ("constant", "linear", "cosine", "step"):
        cfg = ScheduleConfig(name, lr=0.5, total_steps=10, step_size=3)
        assert lr_at(0, cfg) == 0.5


# ------------------------------------------- the original's seed cases 10-15 ---
def test_seed_case_10_warmup():
    # Original: warmup_lr(s, W=1000, lr=1e-3) = 0, 5e-4, 1e-3 at s = 0, 500, 1000.
    # Ours is 0-based with (s + 1) / W, so the same values sit one step earlier
    # and step 0 is lr / W instead of 0.
    cfg = ScheduleConfig("constant", lr=1e-3, warmup_steps=1000)
    assert lr_at(0, cfg) == approx(1e-6)
    assert lr_at(499, cfg) == approx(5e-4)
    assert lr_at(999, cfg) == approx(1e-3)
    assert lr_at(1000, cfg) == approx(1e-3)


def test_seed_case_11_linear_decay():
    # Original: linear_decay_lr(s, T=1000, 1e-3, 1e-4) = 1e-3, 5.5e-4, 1e-4 at
    # s = 0, 500, 1000. Without warmup our offset a equals s: the same values.
    assert linear_decay(0, 1000, 1e-3, 1e-4) == approx(1e-3)
    assert linear_decay(500, 1000, 1e-3, 1e-4) == approx(5.5e-4)
    assert linear_decay(1000, 1000, 1e-3, 1e-4) == 1e-4
    assert lr_at(500, LINEAR) == approx(5.5e-4)


def test_seed_case_12_cosine():
    # Original: cosine_annealing_lr endpoints 1e-3 and 1e-4 (within 1e-5). Ours
    # are exact, and the midpoint it never checked is (1e-3 + 1e-4) / 2.
    assert cosine(0, 1000, 1e-3, 1e-4) == approx(1e-3)
    assert cosine(500, 1000, 1e-3, 1e-4) == approx(5.5e-4)
    assert cosine(1000, 1000, 1e-3, 1e-4) == 1e-4


def test_seed_case_13_step_decay():
    # Original: rate .1 every 100 steps, min 1e-5: 1e-3, 1e-4, 1e-5 at 0, 100,
    # 200. The same here (its step_decay_lr used the unshifted step too).
    assert step_decay(0, 100, 1e-3, 0.1, 1e-5) == approx(1e-3)
    assert step_decay(100, 100, 1e-3, 0.1, 1e-5) == approx(1e-4)
    assert step_decay(200, 100, 1e-3, 0.1, 1e-5) == approx(1e-5)
    assert step_decay(300, 100, 1e-3, 0.1, 1e-5) == 1e-5


def test_seed_case_14_warmup_inside_training():
    # Original (after its step+1 fix): W = 100, lr 1e-3; "after 50 steps" the lr
    # is 5e-4 and "after 100 steps" 1e-3. The 50th step is s = 49 here.
    cfg = ScheduleConfig("constant", lr=1e-3, warmup_steps=100)
    assert lr_at(49, cfg) == approx(5e-4)
    assert lr_at(99, cfg) == approx(1e-3)


def test_seed_case_15_cosine_with_warmup_reaches_min():
    # Original: W 100, total 1000, min 1e-4: after 1000 steps lr <= 1.1 min_lr.
    # Tightened: the last step (s = 999, a = 899 of A = 900) has the closed
    # form, and from s = 1000 on the lr is exactly min_lr.
    cfg = ScheduleConfig(
        "cosine", lr=1e-3, warmup_steps=100, total_steps=1000, min_lr=1e-4
    )
    last = 1e-4 + 9e-4 * 0.5 * (1 + math.cos(math.pi * 899 / 900))
    assert lr_at(999, cfg) == approx(last)
    assert 1e-4 < lr_at(999, cfg) < 1.0001e-4
    assert all(lr_at(s, cfg) == 1e-4 for s in (1000, 1001, 5000))


# ---------------------------------------------------------------- properties ---
@st.composite
def configs(draw: st.DrawFn) -> ScheduleConfig:
    lr = draw(st.floats(1e-6, 1.0))
    warmup = draw(st.integers(0, 40))
    return ScheduleConfig(
        name=draw(st.sampled_from(["constant", "linear", "cosine", "step"])),
        lr=lr,
        warmup_steps=warmup,
        total_steps=warmup + draw(st.integers(1, 300)),
        min_lr=lr * draw(st.sampled_from([0.0, 0.01, 0.5, 1.0])),
        step_size=draw(st.integers(1, 50)),
        gamma=draw(st.floats(0.01, 1.0)),
    )


@given(configs())
def test_warmup_non_decreasing_then_decay_non_increasing(cfg):
    assert cfg.total_steps is not None
    values = [lr_at(s, cfg) for s in range(cfg.total_steps + 20)]
    w = cfg.warmup_steps
    assert all(a <= b for a, b in zip(values[:w], values[1 : w + 1], strict=True))
    assert all(a >= b for a, b in zip(values[w:], values[w + 1 :], strict=False))
    assert all(0.0 < v <= cfg.lr for v in values[:w])
    # (lr - min_lr) rounds, so a decayed value may sit an ulp above lr
    top = cfg.lr * (1 + 4e-16)
    assert all(cfg.min_lr <= v <= top for v in values[w:])
    assert values[w] == cfg.lr  # the first step after warmup: exactly the peak


@given(configs())
def test_decays_stay_at_min_lr_past_total(cfg):
    if cfg.name in ("linear", "cosine"):
        assert cfg.total_steps is not None
        for s in (cfg.total_steps, cfg.total_steps + 1, 10 * cfg.total_steps):
            assert lr_at(s, cfg) == cfg.min_lr


@given(configs())
def test_cosine_is_symmetric_about_its_midpoint(cfg):
    # (1 + cos(pi x)) / 2 + (1 + cos(pi (1 - x))) / 2 = 1
    if cfg.name == "cosine":
        assert cfg.total_steps is not None
        w, big_a = cfg.warmup_steps, cfg.total_steps - cfg.warmup_steps
        for a in range(big_a + 1):
            pair = lr_at(w + a, cfg) + lr_at(w + big_a - a, cfg)
            assert pair == pytest.approx(cfg.lr + cfg.min_lr, rel=1e-12)


def test_pure_same_value_in_any_order():
    # The original overwrote its base lr during warmup, so the sequence drifted.
    cfg = ScheduleConfig(
        "cosine", lr=1e-3, warmup_steps=50, total_steps=500, min_lr=1e-5
    )
    forward = [lr_at(s, cfg) for s in range(600)]
    order = list(range(600))
    random.Random(0).shuffle(order)
    shuffled = {s: lr_at(s, cfg) for s in order}
    assert [shuffled[s] for s in range(600)] == forward
    assert [lr_at(s, cfg) for s in range(600)] == forward


def test_individual_functions_match_lr_at_without_warmup():
    assert constant(7, 0.25) == 0.25
    assert linear_warmup(3, 0, 0.25) == 0.25  # W = 0: no warmup
    assert linear_warmup(3, 8, 0.25) == approx(0.125)
    for s in (0, 1, 250, 999, 1000, 1500):
        assert linear_decay(s, 1000, 1e-3, 1e-4) == lr_at(s, LINEAR)
        assert cosine(s, 1000, 1e-3, 1e-4) == lr_at(s, COSINE)
        assert step_decay(s, 100, 1e-3, 0.1, 1e-5) == lr_at(s, STEP)


def test_config_is_frozen_and_hashable():
    with pytest.raises(AttributeError):
        LINEAR.lr = 1.0  # type: ignore[misc]
    assert hash(LINEAR) == hash(ScheduleConfig(**LINEAR.__dict__))


# ---------------------------------------------------------------- validation ---
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "exponential"}, "name"),
        ({"lr": -1e-3}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"lr": float("inf")}, "lr"),
        ({"lr": "1e-3"}, "lr"),
        ({"min_lr": -1e-6}, "min_lr"),
        ({"min_lr": 2e-3}, "min_lr"),  # above lr
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"warmup_steps": 1.5}, "warmup_steps"),
        ({"warmup_steps": True}, "warmup_steps"),
        ({"total_steps": None}, "total_steps"),  # linear needs it
        ({"total_steps": 100, "warmup_steps": 100}, "total_steps"),  # A = 0
        ({"total_steps": 0}, "total_steps"),
        ({"name": "step", "step_size": None}, "step_size"),
        ({"name": "step", "step_size": 0}, "step_size"),
        ({"gamma": 0.0}, "gamma"),
        ({"gamma": 1.5}, "gamma"),
        ({"name": "constant", "total_steps": -5}, "total_steps"),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    base = {"name": "linear", "lr": 1e-3, "total_steps": 1000, "step_size": 10}
    with pytest.raises(ConfigError, match=field):
        ScheduleConfig(**{**base, **kwargs})


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: lr_at(-1, LINEAR), "step"),
        (lambda: lr_at(1.0, LINEAR), "step"),
        (lambda: lr_at(0, {"name": "linear"}), "cfg"),
        (lambda: constant(-3, 1e-3), "step"),
        (lambda: linear_warmup(0, -1, 1e-3), "warmup_steps"),
        (lambda: linear_decay(0, 0, 1e-3), "total_steps"),
        (lambda: linear_decay(0, 10, 1e-3, 1e-2), "min_lr"),
        (lambda: cosine(0, 10, -1e-3), "lr"),
        (lambda: step_decay(0, 0, 1e-3), "step_size"),
        (lambda: step_decay(0, 10, 1e-3, gamma=-0.1), "gamma"),
    ],
)
def test_function_argument_errors(call, field):
    with pytest.raises(ConfigError, match=field):
        call()
