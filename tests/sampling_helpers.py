"""Constants shared by the sampling test modules: the float dtypes under test,
a four-token distribution with hand-checked top-p sets, and the two configs
``draw`` is held to."""

from __future__ import annotations

import numpy as np

from cllm_spec.sampling import SamplingConfig

DTYPES = [np.float32, np.float64]

# probabilities [0.5, 0.3, 0.15, 0.05] as float64 logits (softmax(log q) = q)
NUCLEUS_Q = np.array([0.5, 0.3, 0.15, 0.05])
NUCLEUS = np.log(NUCLEUS_Q)

DRAW_CONFIGS = [
    SamplingConfig(greedy=True),
    SamplingConfig(temperature=0.8, top_k=5, top_p=0.9),
]
