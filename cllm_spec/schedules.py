"""Learning-rate schedules: the lr of each optimizer step as a pure function.

Steps are 0-based: step ``s`` is the ``(s + 1)``-th optimizer step, and the lr it
uses is ``lr_at(s, cfg)``. Nothing is stored between calls, so asking twice, in
any order, or after a resume gives the same value.

With ``W = warmup_steps``, ``T = total_steps``, ``lr`` the peak and ``min_lr`` the
floor::

    s < W (warmup):      lr * (s + 1) / W          (step 0 uses lr / W, not 0;
                                                    step W - 1 uses the full lr)
    s >= W, with a = s - W and A = T - W:
      constant:          lr
      linear:            lr - (lr - min_lr) * min(a / A, 1)
      cosine:            min_lr + (lr - min_lr) * 0.5 * (1 + cos(pi * min(a / A, 1)))
      step:              max(min_lr, lr * gamma ** (a // step_size))

so the first step after warmup uses the full ``lr`` in every schedule, linear and
cosine reach ``min_lr`` at ``s = T`` and stay there (exactly ``min_lr`` for
``s >= T``), and step decay multiplies by ``gamma`` every ``step_size`` steps.
With the default ``min_lr = 0`` the ``max`` of step decay changes nothing, so
that schedule has a floor only when ``min_lr > 0``; without one it is
``torch.optim.lr_scheduler.StepLR`` started after warmup. Linear
and cosine are PyTorch's ``LinearLR`` (end factor ``min_lr / lr``) and
``CosineAnnealingLR`` (``T_max = A``, ``eta_min = min_lr``) in closed form,
clamped at ``A`` instead of cycling.

Continuing a run on a new plan
------------------------------
A resumed run may be given a new ``total_steps`` (``--resume ... --set
train.steps=3000``). Planning the decay over the new length from the start
would make the rate jump at the resume step (a cosine at 700 of 700 steps is
at ``min_lr``; at 700 of 3000 it is near the peak). :func:`continue_schedule`
instead returns the new plan *continued* from ``R = resume_step`` at the rate
``lr_R = resume_lr`` the old plan had there: for ``s >= R`` the linear or
cosine decay runs from ``lr_R`` at ``R`` to ``min_lr`` at ``T``::

    a = s - R, A = T - R, peak = max(lr_R, min_lr)
      linear:   peak - (peak - min_lr) * min(a / A, 1)
      cosine:   min_lr + (peak - min_lr) * 0.5 * (1 + cos(pi * min(a / A, 1)))

so the rate is continuous at ``R`` and reaches the floor at the new end. Steps
before ``R`` (already taken under the old plan) keep the base formula. A plan
equal to the old one keeps the old one's continuation, so resuming with an
unchanged config stays bit-identical however often it is resumed.

The convention differs from the original C project in two places: its
``warmup_lr(step)`` gave ``lr * step / W`` (0 at step 0, so the first update was
wasted) and its in-optimizer scheduler counted steps from 1. Here the warmup
rule is stated once, on the 0-based step.

``gamma ** k`` is Python's float power with an int exponent, never a
hand-made ``exp(k log gamma)`` (the original's broken exp and log made its
Adam bias correction wrong).

Errors: every field of :class:`ScheduleConfig` and every argument of the
functions below is checked, and a violation raises ``ConfigError`` naming it:
``name`` one of constant, linear, cosine, step; ``lr`` finite >= 0; ``min_lr``
finite in [0, lr]; ``warmup_steps`` an int >= 0; ``total_steps`` an int > W for
linear and cosine (None or an int >= 1 otherwise); ``step_size`` an int >= 1 for
step (None or an int >= 1 otherwise); ``gamma`` in (0, 1]; the step ``s`` an int
>= 0.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from cllm_spec import checks
from cllm_spec.errors import ConfigError

NAMES = ("constant", "linear", "cosine", "step")


def _lr_pair(lr: object, min_lr: object) -> tuple[float, float]:
    peak = checks.expect_in_range("lr", lr, 0.0, math.inf)
    return peak, checks.expect_in_range("min_lr", min_lr, 0.0, peak)


@dataclass(frozen=True)
class ScheduleConfig:
    """Which schedule, and its parameters (see the module docstring)."""

    name: str  # "constant" | "linear" | "cosine" | "step"
    lr: float  # the peak lr, reached at the last warmup step
    warmup_steps: int = 0  # 0: no warmup, step 0 already uses lr
    total_steps: int | None = None  # required by linear and cosine: decay ends here
    min_lr: float = 0.0  # floor of linear, cosine (and step, when > 0)
    step_size: int | None = None  # required by step: steps between decays
    gamma: float = 0.1  # step decay factor, PyTorch StepLR's default
    resume_step: int | None = None  # R: a continued plan (see the module docstring)
    resume_lr: float | None = None  # lr_R, the old plan's rate at R

    def __post_init__(self) -> None:
        checks.expect_choice("name", self.name, NAMES)
        _lr_pair(self.lr, self.min_lr)
        warmup = checks.expect_int_at_least("warmup_steps", self.warmup_steps, 0)
        if self.name in ("linear", "cosine"):
            if self.total_steps is None:
                raise ConfigError(f"total_steps: required by the {self.name} schedule")
            checks.expect_int_at_least("total_steps", self.total_steps, warmup + 1)
        elif self.total_steps is not None:
            checks.expect_int_at_least("total_steps", self.total_steps, 1)
        if self.name == "step" and self.step_size is None:
            raise ConfigError("step_size: required by the step schedule")
        if self.step_size is not None:
            checks.expect_int_at_least("step_size", self.step_size, 1)
        checks.expect_in_range("gamma", self.gamma, 0.0, 1.0, lo_open=True)
        if (self.resume_step is None) != (self.resume_lr is None):
            raise ConfigError("resume_step, resume_lr: give both or neither")
        if self.resume_step is not None:
            if self.name not in ("linear", "cosine"):
                raise ConfigError(
                    f"resume_step: only linear and cosine plans are continued, "
                    f"not {self.name}"
                )
            assert self.total_steps is not None
            checks.expect_int_at_least("resume_step", self.resume_step, warmup)
            if self.resume_step >= self.total_steps:
                raise ConfigError(
                    f"resume_step: must be < total_steps={self.total_steps}, got "
                    f"{self.resume_step}"
                )
            checks.expect_in_range("resume_lr", self.resume_lr, 0.0, math.inf)


def constant(step: int, lr: float) -> float:
    """``lr`` at every step."""
    checks.expect_int_at_least("step", step, 0)
    return checks.expect_in_range("lr", lr, 0.0, math.inf)


def linear_warmup(step: int, warmup_steps: int, lr: float) -> float:
    """``lr * (step + 1) / W`` for ``step < W``, then ``lr`` (W = 0: always lr)."""
    s = checks.expect_int_at_least("step", step, 0)
    w = checks.expect_int_at_least("warmup_steps", warmup_steps, 0)
    peak = checks.expect_in_range("lr", lr, 0.0, math.inf)
    # (s + 1) / w first: the last warmup step then gives exactly peak * 1.0
    return peak * ((s + 1) / w) if s < w else peak


def _progress(step: int, total_steps: int) -> float:
    """``min(step / total_steps, 1)`` after validating both."""
    s = checks.expect_int_at_least("step", step, 0)
    return min(s / checks.expect_int_at_least("total_steps", total_steps, 1), 1.0)


def linear_decay(step: int, total_steps: int, lr: float, min_lr: float = 0.0) -> float:
    """``lr - (lr - min_lr) * min(step / total_steps, 1)``; exactly ``min_lr`` at
    and after ``total_steps`` (the subtraction could be off by an ulp there)."""
    frac = _progress(step, total_steps)
    peak, floor = _lr_pair(lr, min_lr)
    return floor if frac >= 1.0 else peak - (peak - floor) * frac


def cosine(step: int, total_steps: int, lr: float, min_lr: float = 0.0) -> float:
    """``min_lr + (lr - min_lr) * (1 + cos(pi * min(step / total_steps, 1))) / 2``;
    exactly ``lr`` at step 0 and ``min_lr`` from ``total_steps`` on."""
    frac = _progress(step, total_steps)
    peak, floor = _lr_pair(lr, min_lr)
    if frac == 0.0:  # floor + (peak - floor) can miss peak by an ulp
        return peak
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))


def step_decay(
    step: int, step_size: int, lr: float, gamma: float = 0.1, min_lr: float = 0.0
) -> float:
    """``max(min_lr, lr * gamma ** (step // step_size))``."""
    s = checks.expect_int_at_least("step", step, 0)
    size = checks.expect_int_at_least("step_size", step_size, 1)
    factor = checks.expect_in_range("gamma", gamma, 0.0, 1.0, lo_open=True)
    peak, floor = _lr_pair(lr, min_lr)
    return max(floor, peak * factor ** (s // size))


def lr_at(step: int, cfg: ScheduleConfig) -> float:
    """The lr of 0-based optimizer step ``step`` under ``cfg``: warmup, then the
    named schedule on the offset ``a = step - W`` over ``A = total_steps - W``."""
    if not isinstance(cfg, ScheduleConfig):
        raise ConfigError(f"cfg: expected a ScheduleConfig, got {type(cfg).__name__}")
    s = checks.expect_int_at_least("step", step, 0)
    w = cfg.warmup_steps
    if s < w:
        return linear_warmup(s, w, cfg.lr)
    a = s - w
    if cfg.name == "constant":
        return constant(a, cfg.lr)
    if cfg.name == "step":
        assert cfg.step_size is not None  # guaranteed by ScheduleConfig
        return step_decay(a, cfg.step_size, cfg.lr, cfg.gamma, cfg.min_lr)
    assert cfg.total_steps is not None  # guaranteed by ScheduleConfig
    decay = linear_decay if cfg.name == "linear" else cosine
    r = cfg.resume_step
    if r is not None and s >= r:
        assert cfg.resume_lr is not None  # guaranteed by ScheduleConfig
        peak = max(cfg.resume_lr, cfg.min_lr)
        return decay(s - r, cfg.total_steps - r, peak, cfg.min_lr)
    return decay(a, cfg.total_steps - w, cfg.lr, cfg.min_lr)


def continue_schedule(
    new: ScheduleConfig, old: ScheduleConfig, step: int
) -> ScheduleConfig:
    """The plan ``new`` continued from the rate ``old`` has at ``step``.

    ``old`` is the plan a checkpoint was trained under and ``step`` the first
    step still to take. Returns ``old`` itself when ``new`` is the same plan
    (continuation aside); ``new`` unchanged when its rate at ``step`` already
    equals ``old``'s, or when the rate there does not depend on the plan's
    length (constant and step schedules, or ``step`` inside the warmup);
    otherwise ``new`` with ``resume_step = step`` and ``resume_lr`` = the old
    rate (module docstring).
    """
    s = checks.expect_int_at_least("step", step, 0)
    plain = dataclasses.replace(old, resume_step=None, resume_lr=None)
    if new == plain or new == old:
        return old
    if new.name not in ("linear", "cosine") or s < new.warmup_steps:
        return new
    assert new.total_steps is not None  # guaranteed by ScheduleConfig
    if s >= new.total_steps:
        return new  # nothing left to plan: the run is already at its end
    rate = lr_at(s, old)
    if lr_at(s, new) == rate:
        return new
    return dataclasses.replace(new, resume_step=s, resume_lr=rate)
