"""Optimizers: SGD, Adam, AdamW, RMSprop, Adagrad as pure steps over a flat buffer.

Each step takes the parameters, their gradients and the optimizer state, and
returns NEW arrays ``(params_new, state_new)`` with ``state_new.step = step + 1``;
it never writes into its inputs. Shapes and dtypes::

    params: (P,) float32 | float64     the flat parameter buffer, P >= 1
    grads:  (P,) same dtype            d loss / d params
    state:  the NamedTuple of the optimizer (cllm_spec.protocols); every array
            in it is (P,) with the params' dtype, ``step`` is an int >= 0
    params_new: (P,) same dtype; state_new: same type, arrays (P,) same dtype

The update rules are ``torch.optim``'s single-tensor path (``foreach=False``,
``maximize=False``, ``capturable=False``, ``differentiable=False``), with their
defaults. Every rule is elementwise; ``t = step + 1`` is the number of the step
being taken, and ``wd`` is ``weight_decay``.

SGD (``sgd_step``; lr required, momentum 0, dampening 0, wd 0, nesterov False)::

    g = grad + wd * p                                 (only if wd != 0)
    if momentum != 0:
        buf = g                                       if t == 1
            = momentum * buf + (1 - dampening) * g    otherwise
        g = g + momentum * buf    if nesterov else    buf
    p = p - lr * g

On the first step PyTorch creates the buffer as a copy of g, so dampening does
not apply to it; ``state.step == 0`` is what marks "no buffer yet" here. With
momentum 0 the buffer is returned unchanged.

Adam (``adam_step``; lr 1e-3, betas (0.9, 0.999), eps 1e-8, wd 0, amsgrad False)
and AdamW (``adamw_step``; the same but wd 1e-2)::

    AdamW only: p = p * (1 - lr * wd)                 decoupled decay, first
    Adam only:  g = grad + wd * p                     coupled L2 (if wd != 0)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    bc1 = 1 - b1 ** t;  bc2 = 1 - b2 ** t
    amsgrad: vmax = max(vmax, v) and vhat = vmax; else vhat = v
    denom = sqrt(vhat) / sqrt(bc2) + eps              eps outside the root
    p = p - (lr / bc1) * m / denom

``b ** t`` is a Python float raised to an int (``adam_bias_corrections``), never
``exp(t * log b)``. The amsgrad maximum is taken on the raw ``v``, not on the
bias-corrected one. PyTorch evaluates ``m`` as ``lerp(m, g, 1 - b1)``; the two
forms differ by rounding only. With constant gradient and wd 0 the bias
corrections cancel exactly: every step moves each p by ``lr * g / (|g| + eps)``.

RMSprop (``rmsprop_step``; lr 1e-2, alpha 0.99, eps 1e-8, wd 0, momentum 0,
centered False)::

    g = grad + wd * p                                 (only if wd != 0)
    sq = alpha * sq + (1 - alpha) * g * g
    centered: ga = alpha * ga + (1 - alpha) * g;  avg = sqrt(sq - ga * ga) + eps
    else:     avg = sqrt(sq) + eps
    momentum > 0: buf = momentum * buf + g / avg;  p = p - lr * buf
    else:         p = p - lr * g / avg

Adagrad (``adagrad_step``; lr 1e-2, lr_decay 0, wd 0, eps 1e-10)::

    g = grad + wd * p                                 (only if wd != 0)
    clr = lr / (1 + (t - 1) * lr_decay)
    sum = sum + g * g
    p = p - clr * g / (sqrt(sum) + eps)

State arrays that an option does not use (``max_exp_avg_sq`` without amsgrad,
``grad_avg`` when not centered, a momentum buffer with momentum 0) are always
present with the params' shape and dtype and are returned as unchanged copies.
``init_*_state(params)`` builds a fresh state: zeros, step 0 (Adagrad's ``sum``
starts at ``initial_accumulator_value``, PyTorch's default 0). Inputs may have
any strides (a view into a larger buffer is fine); the outputs are new
C-contiguous arrays that share no memory with the inputs or with each other.

Errors (checked by ``validate_*`` before anything is computed)
==============================================================

- params, grads or a state array not a float32/float64 ndarray, or dtypes that
  differ, or a state of the wrong NamedTuple type: ``DTypeError``;
- params not rank 1, grads or a state array not of the params' shape:
  ``ShapeError``; P == 0: ``EmptyInputError``;
- NaN or inf in params, grads or the state: ``NonFiniteError``. Deliberate
  deviation: PyTorch writes the NaN into the parameters and the moments, where it
  stays for good. Refusing the step leaves the caller's arrays intact, so it can
  skip the step (as a gradient scaler does) or stop;
- hyperparameters out of range, or not finite, or flags that are not bools:
  ``ConfigError``, with PyTorch's ranges: lr >= 0, eps >= 0, weight_decay >= 0,
  momentum >= 0, each beta in [0, 1), lr_decay >= 0, initial_accumulator_value
  >= 0, dampening any finite value, nesterov needs momentum > 0 and dampening ==
  0. Deviation: RMSprop's alpha must lie in [0, 1] (PyTorch only asks alpha >=
  0); alpha > 1 gives a negative weight to g * g and sq can turn negative, so the
  square root returns NaN. ``state.step`` must be an int >= 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from cllm_spec import checks
from cllm_spec.checks import FiniteScan
from cllm_spec.errors import ConfigError, DTypeError
from cllm_spec.protocols import AdagradState, AdamState, RMSpropState, SGDState

INF = math.inf


class SGDHyper(NamedTuple):
    lr: float
    momentum: float
    dampening: float
    weight_decay: float
    nesterov: bool


class AdamHyper(NamedTuple):
    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    amsgrad: bool


class RMSpropHyper(NamedTuple):
    lr: float
    alpha: float
    eps: float
    weight_decay: float
    momentum: float
    centered: bool


class AdagradHyper(NamedTuple):
    lr: float
    lr_decay: float
    weight_decay: float
    eps: float


# --------------------------------------------------------------- state -------
def _expect_params(params: Any) -> np.ndarray:
    arr = checks.expect_float("params", params)
    checks.expect_rank("params", arr, 1)
    checks.expect_nonempty("params", arr)
    return arr


def _zeros_like(params: Any) -> np.ndarray:
    return np.zeros_like(_expect_params(params), order="C")


def init_sgd_state(params: np.ndarray) -> SGDState:
    """A fresh SGD state: a zero momentum buffer like ``params``, step 0."""
    return SGDState(momentum_buffer=_zeros_like(params), step=0)


def init_adam_state(params: np.ndarray) -> AdamState:
    """A fresh Adam/AdamW state: zero moments like ``params``, step 0."""
    z = _zeros_like(params)
    return AdamState(exp_avg=z, exp_avg_sq=z.copy(), max_exp_avg_sq=z.copy(), step=0)


def init_rmsprop_state(params: np.ndarray) -> RMSpropState:
    """A fresh RMSprop state: zero averages and buffer like ``params``, step 0."""
    z = _zeros_like(params)
    return RMSpropState(
        square_avg=z, momentum_buffer=z.copy(), grad_avg=z.copy(), step=0
    )


def init_adagrad_state(
    params: np.ndarray, initial_accumulator_value: float = 0.0
) -> AdagradState:
    """A fresh Adagrad state: ``sum`` filled with ``initial_accumulator_value``."""
    value = checks.expect_in_range(
        "initial_accumulator_value", initial_accumulator_value, 0.0, INF
    )
    return AdagradState(sum=np.full_like(_zeros_like(params), value), step=0)


# ------------------------------------------------------ scalar helpers -------
def adam_bias_corrections(beta1: float, beta2: float, t: int) -> tuple[float, float]:
    """``(1 - beta1 ** t, 1 - beta2 ** t)`` with an exact integer power.

    The original computed the powers as exp(t log b) with a broken exp and log,
    so 1 - 0.9 ** 1 came out as 0.105 and the error grew with t.
    """
    return 1.0 - beta1 ** int(t), 1.0 - beta2 ** int(t)


def adagrad_lr(lr: float, lr_decay: float, t: int) -> float:
    """The decayed step size ``lr / (1 + (t - 1) * lr_decay)`` of step ``t``."""
    return lr / (1.0 + (t - 1) * lr_decay)


# ---------------------------------------------------------- validation -------
def _nonneg(name: str, value: object) -> float:
    return checks.expect_in_range(name, value, 0.0, INF)


State = SGDState | AdamState | RMSpropState | AdagradState


def _validate_arrays(
    params: Any,
    grads: Any,
    state: Any,
    cls: type[State],
    scan: FiniteScan,
    check_finite: bool = True,
) -> None:
    """params and grads (P,), the state of type ``cls`` with (P,) arrays, all
    finite (``scan``: see :func:`cllm_spec.checks.expect_finite`).

    ``check_finite=False`` leaves out the finite scans, for a backend whose
    step kernel refuses a NaN or inf input itself (reading every element
    anyway); on that refusal it calls again with True for the spec's error."""
    p = _expect_params(params)
    checks.expect_float("grads", grads)
    checks.expect_same_dtype(("params", "grads"), (p, grads))
    checks.expect_shape("grads", grads, p.shape)
    if not isinstance(state, cls):
        raise DTypeError(f"state: expected {cls.__name__}, got {type(state).__name__}")
    checks.expect_nonnegative_int("state.step", state.step)
    arrays = [("params", p), ("grads", grads)]
    for field in cls._fields[:-1]:  # every field but the trailing step
        name, arr = f"state.{field}", getattr(state, field)
        checks.expect_float(name, arr)
        checks.expect_same_dtype(("params", name), (p, arr))
        checks.expect_shape(name, arr, p.shape)
        arrays.append((name, arr))
    for name, arr in arrays if check_finite else ():
        checks.expect_finite(name, arr, scan)


def validate_sgd(
    params: Any,
    grads: Any,
    state: Any,
    *,
    lr: Any,
    momentum: Any,
    dampening: Any,
    weight_decay: Any,
    nesterov: Any,
    finite_scan: FiniteScan = None,
    check_finite: bool = True,
) -> SGDHyper:
    """The checks of ``sgd_step``; returns the hyperparameters as Python scalars."""
    h = SGDHyper(
        lr=_nonneg("lr", lr),
        momentum=_nonneg("momentum", momentum),
        dampening=checks.expect_in_range("dampening", dampening, -INF, INF),
        weight_decay=_nonneg("weight_decay", weight_decay),
        nesterov=checks.expect_flag("nesterov", nesterov),
    )
    if h.nesterov and (h.momentum <= 0.0 or h.dampening != 0.0):
        raise ConfigError(
            "nesterov: Nesterov momentum requires momentum > 0 and dampening == 0, "
            f"got momentum={h.momentum}, dampening={h.dampening}"
        )
    _validate_arrays(params, grads, state, SGDState, finite_scan, check_finite)
    return h


def _expect_betas(betas: Any) -> tuple[float, float]:
    if not isinstance(betas, Sequence) or len(betas) != 2:
        raise ConfigError(f"betas: expected a pair (beta1, beta2), got {betas!r}")
    b1 = checks.expect_in_range("betas[0]", betas[0], 0.0, 1.0, hi_open=True)
    b2 = checks.expect_in_range("betas[1]", betas[1], 0.0, 1.0, hi_open=True)
    return b1, b2


def validate_adam(
    params: Any,
    grads: Any,
    state: Any,
    *,
    lr: Any,
    betas: Any,
    eps: Any,
    weight_decay: Any,
    amsgrad: Any,
    finite_scan: FiniteScan = None,
    check_finite: bool = True,
) -> AdamHyper:
    """The checks of ``adam_step`` and ``adamw_step`` (the same ranges)."""
    b1, b2 = _expect_betas(betas)
    h = AdamHyper(
        lr=_nonneg("lr", lr),
        beta1=b1,
        beta2=b2,
        eps=_nonneg("eps", eps),
        weight_decay=_nonneg("weight_decay", weight_decay),
        amsgrad=checks.expect_flag("amsgrad", amsgrad),
    )
    _validate_arrays(params, grads, state, AdamState, finite_scan, check_finite)
    return h


def validate_rmsprop(
    params: Any,
    grads: Any,
    state: Any,
    *,
    lr: Any,
    alpha: Any,
    eps: Any,
    weight_decay: Any,
    momentum: Any,
    centered: Any,
    finite_scan: FiniteScan = None,
    check_finite: bool = True,
) -> RMSpropHyper:
    """The checks of ``rmsprop_step``."""
    h = RMSpropHyper(
        lr=_nonneg("lr", lr),
        alpha=checks.expect_in_range("alpha", alpha, 0.0, 1.0),
        eps=_nonneg("eps", eps),
        weight_decay=_nonneg("weight_decay", weight_decay),
        momentum=_nonneg("momentum", momentum),
        centered=checks.expect_flag("centered", centered),
    )
    _validate_arrays(params, grads, state, RMSpropState, finite_scan, check_finite)
    return h


def validate_adagrad(
    params: Any,
    grads: Any,
    state: Any,
    *,
    lr: Any,
    lr_decay: Any,
    weight_decay: Any,
    eps: Any,
    finite_scan: FiniteScan = None,
    check_finite: bool = True,
) -> AdagradHyper:
    """The checks of ``adagrad_step``."""
    h = AdagradHyper(
        lr=_nonneg("lr", lr),
        lr_decay=_nonneg("lr_decay", lr_decay),
        weight_decay=_nonneg("weight_decay", weight_decay),
        eps=_nonneg("eps", eps),
    )
    _validate_arrays(params, grads, state, AdagradState, finite_scan, check_finite)
    return h
