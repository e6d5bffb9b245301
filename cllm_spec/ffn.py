"""Feed-forward pieces: linear, activations, layer norm and the feed-forward block.

Every function works on float32 or float64 arrays; all float arguments of one
call share a dtype, the outputs have that dtype, and nothing is cast, broadcast
or mutated. Shapes use ``...`` for any number of leading dimensions (tokens,
batch rows): ``x: (..., C)`` may be ``(C,)``, ``(T, C)`` or ``(B, T, C)``.
Any strides are accepted. Values follow PyTorch wherever PyTorch has the
operation; the deliberate deviations are listed at the end.

Linear (``torch.nn.Linear``)
----------------------------
::

    linear_forward(x: (..., IN), w: (OUT, IN), b: (OUT,) | None)
        y = x @ w.T + b                                      y: (..., OUT)
    linear_backward(dy: (..., OUT), cache) -> (dx, dw, db)
        dx = dy @ w                                          (..., IN)
        dw = sum over leading dims of dy^T x                 (OUT, IN)
        db = sum over leading dims of dy                     (OUT,), None if b was None

**Weight layout.** ``w`` is ``(OUT, IN)``: row ``o`` holds the weights of output
unit ``o``, exactly as ``torch.nn.Linear.weight`` and as a safetensors
checkpoint of a PyTorch model stores it. The ``(IN, OUT)`` layout ``y = x @ w``
is NOT accepted: when ``IN != OUT`` it is a ShapeError, and when ``IN == OUT``
it silently computes another function, which the conformance suite catches with
non-symmetric square weights. (The project this one replaces used both layouts
in different code paths; an identity-weight test could not tell them apart.)

Cache: ``LinearCache(x, w, has_bias)``.

Activations (``torch.nn.functional.relu`` / ``gelu``)
-----------------------------------------------------
``activation_forward(x: (...), kind) -> (y: (...), ActivationCache(x, kind))``,
elementwise, any shape including 0-d; ``kind`` is one of:

* ``"relu"``: ``y = max(x, 0)``; ``dy/dx = 1 if x > 0 else 0`` (so the
  derivative at 0 is 0, as PyTorch's ``threshold_backward``: the gradient is 0
  where ``x <= 0`` and passes through elsewhere, NaN inputs included).
* ``"gelu"`` (PyTorch ``approximate='none'``)::

      y     = x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt(2)))
      dy/dx = Phi(x) + x * phi(x),   phi(x) = exp(-x^2 / 2) / sqrt(2 pi)

* ``"gelu_tanh"`` (PyTorch ``approximate='tanh'``, GPT-2's "gelu_new")::

      u     = sqrt(2 / pi) * (x + 0.044715 x^3)
      y     = 0.5 * x * (1 + tanh(u))
      dy/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx
      du/dx = sqrt(2 / pi) (1 + 3 * 0.044715 x^2)

  The two GELU forms differ by up to about 1.5e-4 near ``|x| = 1``; they are
  different functions, not two precisions of one.

``activation_backward(dy: (...), cache) -> dx = dy * dy/dx(x)``.

Special values: NaN propagates (``relu(NaN) = NaN``); ``relu(+-inf) = +inf, 0``;
``gelu(+inf) = +inf`` and ``gelu(-inf) = 0`` for both GELU forms; the GELU
derivatives at ``+inf`` and ``-inf`` are 1 and 0. Large finite inputs neither
overflow nor give NaN: ``gelu(x) = x`` for ``x >> 0`` and ``0`` for ``x << 0``.

Layer norm (``torch.nn.LayerNorm(C, eps)``, elementwise affine)
---------------------------------------------------------------
``layernorm_forward(x: (..., C), weight: (C,), bias: (C,), eps=1e-5)``
normalizes over the last axis with the biased variance::

    mean  = sum_c x_c / C
    var   = sum_c (x_c - mean)^2 / C              (biased: divide by C, not C - 1)
    rstd  = 1 / sqrt(var + eps)                   (eps inside the square root)
    x_hat = (x - mean) * rstd
    y     = x_hat * weight + bias                 y: (..., C)

Cache: ``LayerNormCache(x_hat: (..., C), rstd: (...,), weight: (C,))``.
A constant row has ``var = 0``, so ``x_hat = 0`` and ``y = bias`` (finite).

Accuracy: rows with a large common offset (``1e4 + noise`` in float32) must
meet the same tolerance as centred rows. A float32 mean of the raw values
misses it by a factor of 100 to 1000 (and ``E[x^2] - E[x]^2`` by far more);
subtracting a per-row shift such as the row's first element before the mean
(exact there, by Sterbenz's lemma) or accumulating in float64 meets it.

``layernorm_backward(dy: (..., C), cache) -> (dx, dweight, dbias)``. With
``g = dy * weight``, and ``mean`` over the last axis::

    dbias   = sum over leading dims of dy                     (C,)
    dweight = sum over leading dims of dy * x_hat             (C,)
    dx      = rstd * (g - mean(g) - x_hat * mean(g * x_hat))  (..., C)

Derivation: ``x_hat_c = (x_c - mean) rstd`` gives
``d x_hat_c / d x_k = rstd (delta_ck - 1/C - x_hat_c x_hat_k / C)``, because
``d mean / d x_k = 1/C`` and ``d rstd / d x_k = -rstd^3 (x_k - mean) / C``
``= -rstd^2 x_hat_k / C``. Contracting with ``g_c = dL/dx_hat_c`` yields the
formula above.

Feed-forward block
------------------
::

    ffn_forward(x: (..., C), w_fc: (F, C), b_fc: (F,) | None,
                w_proj: (C, F), b_proj: (C,) | None, *, activation="gelu")
        h = linear(x, w_fc, b_fc)                  (..., F)
        a = activation(h, activation)              (..., F)
        y = linear(a, w_proj, b_proj)              (..., C)
    ffn_backward(dy: (..., C), cache) -> (dx, dw_fc, db_fc, dw_proj, db_proj)

composed from the functions above (``db_*`` is None where the bias was None).
``w_proj`` must map back to C (the block sits on a residual stream).
Cache: ``FFNCache(fc: LinearCache, act: ActivationCache, proj: LinearCache)``.

Errors (checked before any computation)
---------------------------------------
* ``DTypeError``: an argument that is not a numpy array, a dtype other than
  float32/float64, float arguments of different dtypes (no promotion), a cache
  of the wrong type;
* ``ShapeError``: wrong rank (``x`` of linear and layer norm needs rank >= 1,
  weights rank 2, biases rank 1) or sizes that disagree, ``dy`` whose shape is
  not the forward output's;
* ``EmptyInputError``: an input with no elements (zero tokens or a zero-sized
  feature dimension);
* ``ConfigError``: an unknown activation, ``eps`` that is not a finite number > 0.

NaN and inf inputs are not errors: they propagate as in PyTorch.

Deliberate deviations from PyTorch
----------------------------------
* ``gelu(-inf)`` is 0 and ``gelu(+inf)`` is +inf, the mathematical limits.
  PyTorch 2.x computes ``-inf * 0`` and returns NaN on CPU (and NaN at +inf on
  its vectorized erf path; pytorch/pytorch#185770, fixes under review give the
  limits we specify). The GELU derivatives at +-inf are likewise 1 and 0.
* Empty inputs are errors (PyTorch returns empty outputs); this project treats
  an empty batch as a bug upstream.
* ``layernorm_forward`` always takes ``weight`` and ``bias`` (pass ones and
  zeros for ``elementwise_affine=False``).
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np

from cllm_spec.checks import (
    expect_cache,
    expect_choice,
    expect_float,
    expect_in_range,
    expect_min_rank,
    expect_nonempty,
    expect_same_dtype,
    expect_shape,
)
from cllm_spec.errors import ShapeError
from cllm_spec.protocols import (
    ActivationCache,
    FFNCache,
    LayerNormCache,
    LinearCache,
)

ACTIVATIONS = ("relu", "gelu", "gelu_tanh")
DEFAULT_ACTIVATION = "gelu"
LAYERNORM_EPS = 1e-5
#: The constants of the tanh approximation of GELU.
GELU_TANH_SCALE = math.sqrt(2.0 / math.pi)
GELU_TANH_CUBIC = 0.044715

CacheT = TypeVar("CacheT")


def _expect_cache(cache: object, cls: type[CacheT]) -> CacheT:
    return expect_cache(cache, cls)


def _expect_optional_bias(name: str, b: object, size: int) -> np.ndarray | None:
    if b is None:
        return None
    arr = expect_float(name, b)
    expect_shape(name, arr, (size,))
    return arr


def _floats_share_dtype(named: dict[str, np.ndarray | None]) -> np.dtype:
    present = {k: v for k, v in named.items() if v is not None}
    return expect_same_dtype(list(present), list(present.values()))


# ------------------------------------------------------------------ linear ----
def validate_linear(x: object, w: object, b: object) -> np.dtype:
    """Check ``x: (..., IN)``, ``w: (OUT, IN)``, ``b: (OUT,) | None``; return dtype."""
    xa = expect_float("x", x)
    wa = expect_float("w", w)
    expect_min_rank("x", xa, 1)
    expect_shape("w", wa, (None, None))
    if xa.shape[-1] != wa.shape[1]:
        raise ShapeError(
            f"x: last dimension {xa.shape[-1]} does not match w: (OUT, IN) = "
            f"{wa.shape}; the weight layout is (OUT, IN) as in torch.nn.Linear"
        )
    ba = _expect_optional_bias("b", b, wa.shape[0])
    dtype = _floats_share_dtype({"x": xa, "w": wa, "b": ba})
    expect_nonempty("x", xa)
    expect_nonempty("w", wa)
    return dtype


def validate_linear_backward(dy: object, cache: object) -> np.dtype:
    """Check ``dy: (..., OUT)`` against a LinearCache; return the dtype."""
    lin = _expect_cache(cache, LinearCache)
    expect_min_rank("cache.x", lin.x, 1)
    expect_shape("cache.w", lin.w, (None, lin.x.shape[-1]))
    dya = expect_float("dy", dy)
    dtype = expect_same_dtype(("dy", "cache.x"), (dya, lin.x))
    expect_shape("dy", dya, (*lin.x.shape[:-1], lin.w.shape[0]))
    return dtype


# ------------------------------------------------------------- activation ----
def validate_activation(x: object, kind: object) -> np.dtype:
    """Check ``x: (...)`` (any rank, non-empty) and ``kind``; return the dtype."""
    expect_choice("kind", kind, ACTIVATIONS)
    xa = expect_float("x", x)
    expect_nonempty("x", xa)
    return xa.dtype


def validate_activation_backward(dy: object, cache: object) -> np.dtype:
    """Check ``dy`` against an ActivationCache (same shape and dtype as ``x``)."""
    act = _expect_cache(cache, ActivationCache)
    expect_choice("cache.kind", act.kind, ACTIVATIONS)
    dya = expect_float("dy", dy)
    dtype = expect_same_dtype(("dy", "cache.x"), (dya, act.x))
    expect_shape("dy", dya, act.x.shape)
    return dtype


# -------------------------------------------------------------- layernorm ----
def validate_layernorm(x: object, weight: object, bias: object, eps: object) -> float:
    """Check ``x: (..., C)``, ``weight, bias: (C,)``, ``eps > 0``; return eps."""
    xa = expect_float("x", x)
    wa = expect_float("weight", weight)
    ba = expect_float("bias", bias)
    expect_min_rank("x", xa, 1)
    expect_shape("weight", wa, (xa.shape[-1],))
    expect_shape("bias", ba, (xa.shape[-1],))
    expect_same_dtype(("x", "weight", "bias"), (xa, wa, ba))
    expect_nonempty("x", xa)
    return expect_in_range("eps", eps, 0.0, math.inf, lo_open=True)


def validate_layernorm_backward(dy: object, cache: object) -> np.dtype:
    """Check ``dy: (..., C)`` against a LayerNormCache; return the dtype."""
    ln = _expect_cache(cache, LayerNormCache)
    expect_min_rank("cache.x_hat", ln.x_hat, 1)
    expect_shape("cache.rstd", ln.rstd, ln.x_hat.shape[:-1])
    expect_shape("cache.weight", ln.weight, ln.x_hat.shape[-1:])
    expect_same_dtype(
        ("cache.x_hat", "cache.rstd", "cache.weight"), (ln.x_hat, ln.rstd, ln.weight)
    )
    dya = expect_float("dy", dy)
    dtype = expect_same_dtype(("dy", "cache.x_hat"), (dya, ln.x_hat))
    expect_shape("dy", dya, ln.x_hat.shape)
    return dtype


# -------------------------------------------------------------------- ffn ----
def validate_ffn(
    x: object,
    w_fc: object,
    b_fc: object,
    w_proj: object,
    b_proj: object,
    activation: object,
) -> np.dtype:
    """Check the whole block before any of it runs; return the dtype."""
    expect_choice("activation", activation, ACTIVATIONS)
    xa = expect_float("x", x)
    fc = expect_float("w_fc", w_fc)
    proj = expect_float("w_proj", w_proj)
    expect_min_rank("x", xa, 1)
    expect_shape("w_fc", fc, (None, xa.shape[-1]))
    hidden = fc.shape[0]
    expect_shape("w_proj", proj, (xa.shape[-1], hidden))
    bfc = _expect_optional_bias("b_fc", b_fc, hidden)
    bproj = _expect_optional_bias("b_proj", b_proj, xa.shape[-1])
    dtype = _floats_share_dtype(
        {"x": xa, "w_fc": fc, "b_fc": bfc, "w_proj": proj, "b_proj": bproj}
    )
    expect_nonempty("x", xa)
    expect_nonempty("w_fc", fc)
    return dtype


def validate_ffn_backward(dy: object, cache: object) -> np.dtype:
    """Check ``dy: (..., C)`` against an FFNCache; return the dtype."""
    block = _expect_cache(cache, FFNCache)
    return validate_linear_backward(dy, block.proj)


__all__ = [
    "ACTIVATIONS",
    "DEFAULT_ACTIVATION",
    "GELU_TANH_CUBIC",
    "GELU_TANH_SCALE",
    "LAYERNORM_EPS",
    "validate_activation",
    "validate_activation_backward",
    "validate_ffn",
    "validate_ffn_backward",
    "validate_layernorm",
    "validate_layernorm_backward",
    "validate_linear",
    "validate_linear_backward",
]
