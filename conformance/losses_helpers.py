"""Golden inputs, upstream gradients and accessors shared by the losses files.

``SEED_*`` are the logits and targets of the seed project's Loss tests 2, 3 and
12 (``tests/unit/test_loss.c``), with their losses and probabilities worked out
by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from conformance.strategies import normal

REDUCTIONS = ("mean", "sum", "none")
KINDS = ("mse", "l1", "huber")  # the regression losses: <kind>_forward, _backward

# Logits and targets of the seed's Loss tests 2, 3 and 12:
#   row 0: exp(2) + exp(1) + exp(0.1) = 7.389056 + 2.718282 + 1.105171 = 11.212509
#          lse0 = log(11.212509) = 2.4170300162778333, loss0 = lse0 - 2
#   row 1: exp(0.5) + exp(2.5) + exp(0.2) = 1.648721 + 12.182494 + 1.221403 = 15.052618
#          lse1 = log(15.052618) = 2.7115519288617866, loss1 = lse1 - 2.5
SEED_LOGITS = [[2.0, 1.0, 0.1], [0.5, 2.5, 0.2]]
SEED_TARGETS = [0, 1]
SEED_ROW_LOSS = [0.4170300162778333, 0.21155192886178664]
SEED_MEAN_LOSS = 0.31429097256981  # (loss0 + loss1) / 2
# p = exp(logit - lse) per row
SEED_PROBS = [
    [0.659001138885968, 0.24243297070471395, 0.0985658904093182],
    [0.10953053295069427, 0.8093272525184521, 0.08114221453085362],
]


def upstream(
    rng: np.random.Generator, reduction: str, shape: tuple[int, ...], dtype: Any
) -> np.ndarray:
    """A random dloss: 0-d for mean and sum, ``shape`` for none."""
    # np.asarray: a 0-d draw comes back as a NumPy scalar, not an ndarray
    return np.asarray(normal(rng, shape if reduction == "none" else (), dtype))


def regression(
    backend: Any, kind: str
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    return getattr(backend, f"{kind}_forward"), getattr(backend, f"{kind}_backward")
