"""Mutant plugin: warmup uses lr * s / W, so the first step gets lr = 0 (the
seed's bug before its fix). Schedules are spec functions, not backend ones, so
this mutant is a pytest plugin that patches the spec module at start-up:

    pytest tests/test_schedules.py -p conformance.mutants.warmup_off_by_one
"""

import cllm_spec.schedules as _schedules

_reference = _schedules.linear_warmup


def _off_by_one(step: int, warmup_steps: int, lr: float) -> float:
    if 0 < step < warmup_steps:
        return _reference(step - 1, warmup_steps, lr)
    if step == 0 and warmup_steps > 0:
        return 0.0
    return _reference(step, warmup_steps, lr)


_schedules.linear_warmup = _off_by_one
