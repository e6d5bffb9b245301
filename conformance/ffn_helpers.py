"""Sizes, inputs and golden values shared by the feed-forward conformance files.

The golden values are gelu and gelu_tanh and their derivatives at five points,
beside the libm forms that re-derive them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cllm_spec.tolerances import Tolerance, tolerance
from conformance.strategies import EDGE_SIZES, normal

KINDS = ("relu", "gelu", "gelu_tanh")
# (IN, OUT) and (C, F) pairs from the edge sizes, small products
SIZE_PAIRS = tuple(zip(EDGE_SIZES, EDGE_SIZES[::-1], strict=True))


# --- golden constants ---------------------------------------------------------
# gelu(x) = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)); gelu_tanh(x) = 0.5 x (1 +
# tanh(sqrt(2/pi) (x + 0.044715 x^3))). Values at 50 digits, rounded to float64;
# test_golden_constants_match_libm re-derives each from math.erf / math.tanh.
GOLDEN_X = (-2.0, -1.0, 0.0, 1.0, 2.0)
GELU_AT = (
    -0.04550026389635842,  # -2 Phi(-2), Phi(-2) = 0.02275013194817921
    -0.15865525393145705,  # -Phi(-1)
    0.0,
    0.8413447460685429,  # Phi(1)
    1.9544997361036416,  # 2 Phi(2)
)
GELU_TANH_AT = (
    -0.04540230591222498,
    -0.1588080093917233,
    0.0,
    0.8411919906082767,
    1.954597694087775,
)
# d = gelu - gelu_tanh. Both forms satisfy f(x) - f(-x) = x, so d is even:
# d(-x) = d(x). Pinned so that swapping the two forms fails.
GELU_MINUS_TANH_AT = (
    -9.795798413343318e-05,
    1.5275546026624382e-04,
    0.0,
    1.5275546026624382e-04,
    -9.795798413343318e-05,
)
# d gelu/dx = Phi(x) + x phi(x); d gelu_tanh/dx by the chain rule (spec).
GELU_GRAD_AT = (
    -0.0852318010781969,
    -0.0833154705876863,
    0.5,
    1.0833154705876864,
    1.085231801078197,
)
GELU_TANH_GRAD_AT = (
    -0.08609925662361838,
    -0.08296408384578255,
    0.5,
    1.0829640838457826,
    1.0860992566236183,
)
# relu' is 1 for x > 0 and 0 for x <= 0 (0 at the kink, as PyTorch)
RELU_GRAD_AT = (0.0, 0.0, 0.0, 1.0, 1.0)
GOLDEN_GRAD = {
    "relu": RELU_GRAD_AT,
    "gelu": GELU_GRAD_AT,
    "gelu_tanh": GELU_TANH_GRAD_AT,
}


def gelu_libm(x: float) -> float:
    """gelu via libm, with erfc on the left to avoid 1 + erf cancellation."""
    if x < 0:
        return 0.5 * x * math.erfc(-x / math.sqrt(2.0))
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def gelu_tanh_libm(x: float) -> float:
    u = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)
    return 0.5 * x * (1.0 + math.tanh(u))


def gelu_grad_libm(x: float) -> float:
    """Phi(x) + x phi(x)."""
    pdf = math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return 0.5 * math.erfc(-x / math.sqrt(2.0)) + x * pdf


def gelu_tanh_grad_libm(x: float) -> float:
    k = math.sqrt(2.0 / math.pi)
    t = math.tanh(k * (x + 0.044715 * x**3))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3 * 0.044715 * x**2)


def derived_tol(output: str, dtype: Any) -> Tolerance:
    """The tolerance of ``dtype`` for a quantity derived (in float64) from outputs."""
    return tolerance("ffn", output, dtype)


def linear_inputs(
    rng: np.random.Generator,
    lead: tuple[int, ...],
    n_in: int,
    n_out: int,
    dtype: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = normal(rng, (*lead, n_in), dtype)
    w = normal(rng, (n_out, n_in), dtype, scale=1.0 / math.sqrt(n_in))
    b = normal(rng, (n_out,), dtype, scale=0.5)
    return x, w, b


def ffn_inputs(
    rng: np.random.Generator, lead: tuple[int, ...], c: int, f: int, dtype: Any
) -> list[np.ndarray]:
    x = normal(rng, (*lead, c), dtype)
    w_fc = normal(rng, (f, c), dtype, scale=1.0 / math.sqrt(c))
    b_fc = normal(rng, (f,), dtype, scale=0.5)
    w_proj = normal(rng, (c, f), dtype, scale=1.0 / math.sqrt(f))
    b_proj = normal(rng, (c,), dtype, scale=0.5)
    return [x, w_fc, b_fc, w_proj, b_proj]
