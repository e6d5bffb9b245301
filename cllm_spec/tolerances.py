"""The named tolerance table: how close a backend's floats must be to the reference.

A check passes when, element by element,

    |actual - expected| <= atol + rtol * |expected|

with ``expected`` from the float64 reference. The *headroom* of a check is the
largest ratio ``|actual - expected| / (atol + rtol * |expected|)``: below 1 passes;
the conformance report keeps the worst headroom per component, so a tolerance
that is far too loose (headroom near 0) or too tight (near 1) is visible.

Entries are keyed by (component, output, dtype). Lookup falls back to
(component, "*", dtype) and then to the dtype default. Each entry says why it
has its size and the worst error observed when it was calibrated (float32 on
this project's NumPy backend against the float64 reference, 2 cores x86-64).

float64 backends are compared with ``FLOAT64_DEFAULT``: a float64 backend that
computes the same formula in another order lands within a few ulps times the
reduction length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float
    why: str
    observed: str = "not calibrated"

    def bound(self, expected: np.ndarray) -> np.ndarray:
        bound: np.ndarray = self.atol + self.rtol * np.abs(expected)
        return bound


FLOAT32_DEFAULT = Tolerance(
    rtol=1e-5,
    atol=1e-6,
    why="float32 has eps 1.2e-7; short reductions (<= 65 terms) of O(1) values "
    "accumulate a few tens of eps",
)
FLOAT64_DEFAULT = Tolerance(
    rtol=1e-10,
    atol=1e-12,
    why="float64 has eps 2.2e-16; leaves 4 orders of magnitude for reordered sums",
)

_DEFAULTS = {"float32": FLOAT32_DEFAULT, "float64": FLOAT64_DEFAULT}

#: (component, output, dtype) -> Tolerance. "*" as output matches any output.
TABLE: dict[tuple[str, str, str], Tolerance] = {
    # -- finite differences: analytic backward (float64) vs central differences -
    ("gradcheck", "*", "float64"): Tolerance(
        rtol=1e-6,
        atol=1e-7,
        why="central differences with h = 1e-6 carry O(h^2) truncation and "
        "O(eps/h) ~ 1e-10 rounding error on O(1) values",
    ),
    # -- losses -------------------------------------------------------------
    ("losses", "*", "float32"): Tolerance(
        rtol=1e-5,
        atol=2e-6,
        why="exp/log of float32 logits plus a sum over V <= 65 classes; the "
        "backwards subtract nearly equal terms (p - q, dy - sum), so atol covers "
        "gradients that cancel to ~0",
        observed="300 random cases, N <= 69, V in EDGE_SIZES, logits up to 10 sigma: "
        "worst headroom 0.31 (log_softmax.dx abs 4.2e-6 on |dx| ~ 30, "
        "softmax.dx abs 7.7e-7 near 0), CE loss 0.08, CE dlogits 0.13, "
        "mse/l1/huber <= 0.02",
    ),
    # -- gradients ------------------------------------------------------------
    ("gradients", "*", "float32"): Tolerance(
        rtol=1e-5,
        atol=1e-6,
        why="elementwise ops round once per element; the tree sum of K <= 8 "
        "buffers rounds K - 1 times and can cancel to ~0 (atol); norm, mean are "
        "float64-accumulated",
        observed="300 random cases, P <= 1e5: worst headroom 0.31 (tree of 5 "
        "buffers, abs 1.2e-6 on values ~10); norm and mean 0 (exact after the "
        "float64 sum), clip/scale/accumulate <= 0.007",
    ),
    # -- optim ----------------------------------------------------------------
    ("optim", "*", "float32"): Tolerance(
        rtol=1e-5,
        atol=1e-6,
        why="25 elementwise steps on O(1) params and gradients; each step loses a "
        "few ulp (the division by sqrt(v) + eps, the moment updates)",
        observed="worst headroom 0.25 (adamw-amsgrad exp_avg, abs 4.5e-7) over 100 "
        "seeds x 10 sizes of every trajectory config not listed below",
    ),
    ("optim", "sgd/params", "float32"): Tolerance(
        rtol=1e-5,
        atol=1e-5,
        why="with momentum 0.9 the params take steps of lr * buf = O(1) and drift "
        "to |p| ~ 10-20 in 25 steps; where p crosses 0 the absolute error is a "
        "few ulp(16) = 1.9e-6",
        observed="max abs error 4.2e-6 (sgd-nesterov), headroom 0.41, 100 seeds",
    ),
    ("optim", "sgd/state.momentum_buffer", "float32"): Tolerance(
        rtol=1e-5,
        atol=1e-5,
        why="the buffer sums about 1/(1 - momentum) = 10 gradients of size up to "
        "~9, so its terms reach ~30; cancellation to near 0 leaves a few "
        "ulp(32) = 3.8e-6 absolute",
        observed="max abs error 4.3e-6 (sgd-momentum), headroom 0.41, 100 seeds",
    ),
    ("optim", "rmsprop/state.momentum_buffer", "float32"): Tolerance(
        rtol=1e-5,
        atol=2e-5,
        why="its terms g / avg reach 1/sqrt(1 - alpha) = 10 and it sums about "
        "1/(1 - momentum) = 10 of them, so it holds values ~100 whose "
        "cancellation leaves a few ulp(100) = 7.6e-6 absolute",
        observed="max abs error 7.9e-6 (rmsprop-momentum), headroom 0.38, 100 seeds",
    ),
    ("optim", "adam_long_run/step", "float32"): Tolerance(
        rtol=1e-4,
        atol=0.0,
        why="v is an EMA with b2 = 0.999: each step's rounding (~6e-8 relative) "
        "decays by 0.999 per step, so over 10^4 steps v settles up to ~1/(1 - "
        "b2) ulp away from g^2 and sqrt(v) half of that",
        observed="max rel error 2.6e-5 of the step lr g / (|g| + eps), headroom "
        "0.26, three gradient sets",
    ),
    # -- attention ------------------------------------------------------------
    ("attention", "*", "float32"): Tolerance(
        rtol=1e-4,
        atol=1e-5,
        why="two matmuls with K = HS and K = T, softmax in between, then the QKV "
        "and output projections with K = C",
        observed="worst headroom 0.27 (mha_backward.dx, max abs 1.2e-5); forward "
        "0.05, attention_backward 0.06; 150 seeds x T in EDGE_SIZES, B = 2",
    ),
    **dict.fromkeys(
        [
            ("attention", f"mha_backward.{grad}", "float32")
            for grad in ("dw_qkv", "db_qkv", "dw_proj", "db_proj")
        ],
        Tolerance(
            rtol=1e-4,
            atol=5e-5,
            why="parameter gradients sum B*T <= 130 rows of float32 products that "
            "already carry rounding; cancellation leaves small sums whose absolute "
            "error scales with the summed magnitudes, not with the result",
            observed="max abs 3.0e-5 (dw_qkv), 1.6e-5 (db_qkv), 1.9e-5 (dw_proj), "
            "1.4e-5 (db_proj): headroom <= 0.61; 150 seeds x T in EDGE_SIZES, "
            "B = 2, C = 6 (headroom 0.78 under the atol 1e-5 of the row above)",
        ),
    ),
    # -- ffn ------------------------------------------------------------------
    ("ffn", "*", "float32"): Tolerance(
        rtol=1e-4,
        atol=1e-5,
        why="matmuls with K = C or F (<= 65 terms in most tests, up to 2048 in "
        "the original-dimension test) accumulate about sqrt(K) ulp on O(1) "
        "outputs; layernorm divides by a standard deviation that can be small",
        observed="worst headroom 0.15 (ffn backward at B = 64, C = 32, F = 128); "
        "0.06 at C = 512, F = 2048; 0.13 for linear over random leading shapes",
    ),
    ("ffn", "activation", "float32"): Tolerance(
        rtol=4e-6,
        atol=5e-7,
        why="elementwise exp/erf/tanh of one value; 0.5 x (1 + erf) and 0.5 x "
        "(1 + tanh) in float32 lose up to |x| * 3e-8 absolute in the left tail, "
        "which atol admits for |x| <= 12",
        observed="dense grid [-12, 12] plus 1e5 normal(0, 3) points: gelu max "
        "abs 3.8e-7 (headroom 0.02), gelu_tanh 5.2e-7 (0.05); the naive float32 "
        "formulas PyTorch uses: headroom 0.17 and 0.30",
    ),
    ("ffn", "activation.dx", "float32"): Tolerance(
        rtol=4e-6,
        atol=3e-6,
        why="as activation, plus the float32 tanh-form derivative PyTorch uses, "
        "0.5 x (1 - tanh^2 u) u', loses ~1.2e-6 absolute near x = 5.4 where "
        "1 - tanh^2 cancels; Phi(x) + x phi(x) cancels near its zero at x = -0.75",
        observed="same grid: gelu' max abs 1.2e-7, gelu_tanh' 1.8e-7 (headroom "
        "0.02-0.03); PyTorch's float32 tanh-form derivative 1.2e-6 (headroom 0.39)",
    ),
    ("ffn", "gelu_vs_libm", "float32"): Tolerance(
        rtol=4e-6,
        atol=5e-7,
        why="the activation tolerance: float32 gelu against libm erf/erfc in "
        "float64 on the same (exact) float32 inputs",
        observed="headroom 0.02 (gelu) on 5001 points of [-10, 10] and normal(0, 3)",
    ),
    ("ffn", "gelu_vs_libm", "float64"): Tolerance(
        rtol=1e-13,
        atol=1e-15,
        why="a float64 gelu must use an erf good to a few ulp: rounding x / sqrt 2 "
        "alone costs 2 z^2 ulp of erfc (1.1e-14 relative at |x| = 10), and the "
        "naive 0.5 x (1 + erf) form loses 1.8e-15 absolute to cancellation; an "
        "erf approximation good to 1e-12 or worse (Abramowitz-Stegun 7.1.26: "
        "1.5e-7) fails",
        observed="numpy backend (Cody erfc): 1.3e-14 relative, headroom 0.011 on "
        "[-10, 10]; the naive form with libm erf: headroom 0.23",
    ),
    # -- embedding ------------------------------------------------------------
    ("embedding", "*", "float32"): Tolerance(
        rtol=1e-6,
        atol=1e-7,
        why="a lookup and one addition per element (0.5 ulp)",
        observed="forward headroom 0.06 (max abs 2.4e-7 on values up to ~8); "
        "200 seeds x EDGE_SIZES",
    ),
    **dict.fromkeys(
        [
            ("embedding", f"embedding_backward.{grad}", "float32")
            for grad in ("dwte", "dwpe")
        ],
        Tolerance(
            rtol=1e-5,
            atol=1e-5,
            why="scatter-add: a row of dwte sums every occurrence of its id (up to "
            "B*T = 130 rows here), so cancellation leaves absolute errors of "
            "sqrt(n) * eps * the summed magnitudes",
            observed="dwte max abs 3.5e-6 (headroom 0.14), dwpe 7.2e-7 (0.02); "
            "rtol 1e-6/atol 1e-7 failed with headroom 1.5; 200 seeds x EDGE_SIZES",
        ),
    ),
    # -- model ------------------------------------------------------------------
    ("model", "*", "float32"): Tolerance(
        rtol=1e-4,
        atol=1e-5,
        why="the whole model: L blocks of the attention and ffn kernels (each "
        "1e-4/1e-5) in a residual stream, then LN_f and the LM head with K = C; "
        "applies to logits, gradients and KV-cache decoding",
        observed="logits max abs 7.7e-6 on values up to ~4 (headroom 0.32), grads "
        "3.3e-6 (0.15), kv_cache chunks vs full 1.3e-6 (0.07); rtol 1e-5/atol 1e-6 "
        "failed with headroom 3.2; 40 seeds x 3 configs (L <= 3, C <= 16)",
    ),
    **dict.fromkeys(
        [("model", "loss", "float32"), ("model", "trajectory", "float32")],
        Tolerance(
            rtol=1e-5,
            atol=1e-6,
            why="the loss is a mean over B*T tokens, so the logits' errors "
            "average out; a 12-step AdamW run adds a few ulps per step",
            observed="loss max abs 7.7e-7 (headroom 0.02), 12-step trajectory "
            "6.4e-7 (0.03); 40 seeds",
        ),
    ),
}


def tolerance(component: str, output: str, dtype: np.dtype | str) -> Tolerance:
    """The tolerance for ``output`` of ``component`` computed in ``dtype``."""
    key = np.dtype(dtype).name
    for probe in ((component, output, key), (component, "*", key)):
        if probe in TABLE:
            return TABLE[probe]
    return _DEFAULTS.get(key, FLOAT32_DEFAULT)
