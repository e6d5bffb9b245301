"""Configurations, params and batches shared by the model conformance files.

``TINY`` is the small model most checks run; ``perturbed_params`` moves float64
params far from the init, so that every path carries a sizeable signal.
"""

from __future__ import annotations

import numpy as np

from cllm_spec.model import IGNORE_INDEX, ModelConfig, init_params

TINY = {"vocab_size": 13, "n_embd": 8, "n_layer": 2, "n_head": 2, "block_size": 7}


def perturbed_params(cfg: ModelConfig, rng: np.random.Generator) -> np.ndarray:
    """float64 params far from the init, so every path carries a sizeable signal."""
    params = init_params(cfg, rng, np.float64)
    return params + 0.3 * rng.standard_normal(params.shape)


def make_batch(
    cfg: ModelConfig, rng: np.random.Generator, b: int, t: int, n_ignored: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    ids = rng.integers(0, cfg.vocab_size, (b, t))
    targets = rng.integers(0, cfg.vocab_size, (b, t))
    flat = targets.reshape(-1)
    flat[rng.choice(flat.size, n_ignored, replace=False)] = IGNORE_INDEX
    return ids, targets
