"""A synthetic least-squares model in float32 for the MPI engine's tests.

Per token ``loss = 0.5 * (x . w - y)^2``, so the gradient of a group's summed
loss is ``sum_tokens (x . w - y) x``. Rows are scaled by factors between 1e-2
and 1e2, so float32 sums of group gradients depend on the order of the
additions (the tests check this): a reduction in any order other than the
group order changes bits.

Used by the mpiexec'd program (``train.py`` beside this file), by the
single-process reference in the MPI tests, so both train the same model on the
same batches, and by the thread coordinator's tests
(``tests/parallel_coordinator_helpers.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cllm_spec.parallel.mpi import weights_digest

P = 33  # parameters
K = 4  # tokens per row
LR = 1e-5


def make_batch(
    rng: np.random.Generator, rows: int, dtype: Any = np.float32
) -> tuple[np.ndarray, ...]:
    scale = 10.0 ** rng.uniform(-2.0, 2.0, size=(rows, 1, 1))
    x = (rng.standard_normal((rows, K, P)) * scale).astype(dtype)  # (B, K, P)
    y = rng.standard_normal((rows, K)).astype(dtype)  # (B, K)
    mask = rng.random((rows, K)) < 0.7  # (B, K): unequal token counts per group
    return x, y, mask


def make_data(
    seed: int, steps: int, rows: int, accum: int
) -> list[list[tuple[np.ndarray, ...]]]:
    """``steps`` lists of ``accum`` micro-batches of ``rows`` rows."""
    rng = np.random.default_rng(seed)
    return [[make_batch(rng, rows) for _ in range(accum)] for _ in range(steps)]


def lsq_terms(w: np.ndarray, mb: tuple) -> tuple[np.ndarray, float, int]:
    """Gradient of the summed loss, the summed loss and the token count."""
    x, y, mask = mb
    r = ((x * w).sum(axis=-1) - y) * mask  # (B, K) residuals, 0 where masked
    grads = (r[..., None] * x).sum(axis=(0, 1))  # (P,)
    loss_sum = 0.5 * float(np.sum(r.astype(np.float64) ** 2))
    return grads, loss_sum, int(mask.sum())


def initial_weights() -> np.ndarray:
    return np.linspace(-0.05, 0.05, P, dtype=np.float32)


@dataclass
class Sgd:
    """Plain SGD on the least-squares model; records what every step saw."""

    w: np.ndarray = field(default_factory=initial_weights)
    losses: list[float] = field(default_factory=list)
    grads: list[str] = field(default_factory=list)  # hex of the gradient bytes
    computed: list[int] = field(default_factory=list)  # groups grad_fn was asked
    digests: list[str] = field(default_factory=list)  # weights_digest after updates

    def grad_fn(self, group: int, mb: tuple) -> tuple[np.ndarray, float, int]:
        self.computed.append(group)
        return lsq_terms(self.w, mb)

    def optimizer_step(self, grad: np.ndarray, loss: float) -> float:
        self.losses.append(loss)
        self.grads.append(grad.tobytes().hex())
        self.w = self.w - np.float32(LR) * grad
        self.digests.append(weights_digest(self.w))
        return float(np.linalg.norm(grad))
