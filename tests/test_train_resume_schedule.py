"""A resumed run given a new length continues its learning rate, no jump."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cllm_spec import checkpoint
from cllm_spec.errors import ConfigError
from cllm_spec.schedules import ScheduleConfig, continue_schedule, lr_at
from cllm_spec.train.config import load_config
from cllm_spec.train.state import resumed_schedule, schedule_config
from tests.cli_train_helpers import cllm_train, corpus, ok, rows, sets  # noqa: F401

OLD = ScheduleConfig("cosine", 0.01, 10, 100, 0.001)


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_continued_plan_is_continuous_and_ends_at_the_floor(name: str) -> None:
    old = dataclasses.replace(OLD, name=name)
    new = dataclasses.replace(old, total_steps=300)
    plan = continue_schedule(new, old, 50)
    assert (plan.resume_step, plan.resume_lr) == (50, lr_at(50, old))
    assert lr_at(50, plan) == lr_at(50, old)  # exactly: no jump at all
    assert lr_at(300, plan) == old.min_lr and lr_at(10_000, plan) == old.min_lr
    rates = [lr_at(s, plan) for s in range(50, 301)]
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))
    assert lr_at(50, new) > 1.3 * lr_at(50, old)  # what replanning would have done


def test_a_finished_cosine_stays_at_its_floor_when_extended() -> None:
    new = dataclasses.replace(OLD, total_steps=3000)
    plan = continue_schedule(new, OLD, 100)
    assert [lr_at(s, plan) for s in (100, 1000, 3000)] == [OLD.min_lr] * 3


def test_same_plan_keeps_its_continuation_so_resumes_stay_identical() -> None:
    continued = continue_schedule(dataclasses.replace(OLD, total_steps=300), OLD, 50)
    plain = dataclasses.replace(continued, resume_step=None, resume_lr=None)
    # resumed again at step 120 with the same config: the same plan, not a
    # new cosine started at 120
    assert continue_schedule(plain, continued, 120) is continued


@pytest.mark.parametrize(
    ("new", "step"),
    [
        (dataclasses.replace(OLD, name="constant"), 50),  # no length in it
        (dataclasses.replace(OLD, total_steps=300), 5),  # still warming up
        (OLD, 50),  # unchanged
    ],
)
def test_nothing_to_continue(new: ScheduleConfig, step: int) -> None:
    plan = continue_schedule(new, OLD, step)
    assert plan.resume_step is None and plan == new


def test_continuation_fields_are_checked() -> None:
    with pytest.raises(ConfigError, match="both or neither"):
        dataclasses.replace(OLD, resume_step=50)
    with pytest.raises(ConfigError, match="resume_step"):
        dataclasses.replace(OLD, resume_step=100, resume_lr=0.005)
    with pytest.raises(ConfigError, match="resume_step"):
        dataclasses.replace(OLD, resume_step=5, resume_lr=0.005)  # in the warmup
    with pytest.raises(ConfigError, match="only linear and cosine"):
        ScheduleConfig("constant", 0.01, resume_step=5, resume_lr=0.1)


def test_resumed_schedule_says_what_it_decided() -> None:
    cfg = load_config(None, ["train.steps=300", "schedule.warmup_steps=10"])
    old = dataclasses.replace(schedule_config(cfg), total_steps=100)
    plan, notice = resumed_schedule(cfg, old, 50)
    assert notice is not None and "continues from" in notice and "300" in notice
    assert lr_at(50, plan) == lr_at(50, old)
    replan = load_config(None, ["train.steps=300", "schedule.on_resume=replan"])
    plan, notice = resumed_schedule(replan, old, 50)
    assert plan == schedule_config(replan)
    assert notice is not None and "jumps from" in notice
    assert resumed_schedule(cfg, schedule_config(cfg), 50) == (
        schedule_config(cfg),
        None,
    )


def test_cli_extending_a_run_continues_the_rate(tmp_path, corpus) -> None:  # noqa: F811
    """12 planned steps, resumed at 6 with 24: the rate goes on from step 6's
    value, reaches min_lr at 24, and a second resume with the same config gives
    the bits of a run that was never interrupted."""
    common = dict(
        data__corpus=corpus,
        optim__lr=0.01,
        schedule__min_lr=0.001,
        schedule__warmup_steps=2,
        train__checkpoint_every=6,
        train__keep_last=10,
    )
    first, second = tmp_path / "first", tmp_path / "second"
    ok(cllm_train(*sets(train__out_dir=first, train__steps=12, **common)))
    six = str(checkpoint.checkpoint_path(first, 6))
    extend = ["--set", "train.steps=24"]
    out = ok(cllm_train("--resume", six, "--set", f"train.out_dir={second}", *extend))
    assert "schedule (continue): the rate continues from" in out.stdout
    old = ScheduleConfig("cosine", 0.01, 2, 12, 0.001)
    lrs = [r["lr"] for r in rows(second, "train")]
    assert lrs[0] == lr_at(6, old)  # step 7 uses the rate step 7 had
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[-1] > 0.001 and lr_at(24, old) == 0.001

    # the extended run resumed again at 18 with its own config: the same bits
    # as the run that went on to 24 uninterrupted
    third = tmp_path / "third"
    eighteen = str(checkpoint.checkpoint_path(second, 18))
    out = ok(cllm_train("--resume", eighteen, "--set", f"train.out_dir={third}"))
    assert "schedule (" not in out.stdout  # nothing was re-planned
    assert [r["lr"] for r in rows(third, "train")] == lrs[-6:]
    ta, _ = checkpoint.load(checkpoint.checkpoint_path(second, 24))
    tb, _ = checkpoint.load(checkpoint.checkpoint_path(third, 24))
    for name in ta:
        np.testing.assert_array_equal(ta[name], tb[name], err_msg=name)
