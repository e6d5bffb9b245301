"""Feed-forward pieces on the C kernels of ``csrc/ffn.c`` and ``csrc/gemm.c``.

The math, shapes and error contract are in :mod:`cllm_spec.ffn`; every function
validates with the same checks as the reference before calling C.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cllm_c._lib import F32, arr, check, empty, kernel, lib, ptr
from cllm_spec.errors import ShapeError
from cllm_spec.ffn import (
    validate_activation,
    validate_activation_backward,
    validate_ffn,
    validate_ffn_backward,
    validate_layernorm,
    validate_layernorm_backward,
    validate_linear,
    validate_linear_backward,
)
from cllm_spec.protocols import (
    Activation,
    ActivationCache,
    FFNCache,
    LayerNormCache,
    LinearCache,
)

_KINDS = {"relu": 0, "gelu": 1, "gelu_tanh": 2}


# ------------------------------------------------------------------ linear ----
def _out(
    name: str, given: np.ndarray | None, shape: tuple[int, ...], dt: np.dtype
) -> np.ndarray:
    """A new output array, or the caller's, checked: C writes its whole extent."""
    if given is None:
        return empty(shape, dtype=dt)
    out = arr(name, given, dt, shape)
    if out is not given or not out.flags.writeable:
        raise ShapeError(f"{name}: expected a writable C-contiguous output array")
    return out


def _linear(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None
) -> tuple[np.ndarray, LinearCache]:
    xc, wc = arr("x", x), arr("w", w)
    bc = None if b is None else arr("b", b)
    out_f, in_f = wc.shape
    n = xc.size // in_f
    y = empty((*x.shape[:-1], out_f), dtype=x.dtype)  # (..., OUT)
    status = kernel("cllm_linear_forward", x.dtype)(
        ptr(xc), ptr(wc), ptr(bc), ptr(y), n, in_f, out_f
    )
    check(status, "linear_forward")
    return y, LinearCache(x, w, b is not None)


def _linear_backward_operands(
    dy: np.ndarray, cache: LinearCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(dy, x, w)`` contiguous and checked against each other."""
    x, w, _ = cache
    dyc = arr("dy", dy)
    xc = arr("cache.x", x, dyc.dtype)
    wc = arr("cache.w", w, dyc.dtype)
    out_f, in_f = wc.shape if wc.ndim == 2 else (-1, -1)
    arr("cache.x", xc, shape=(*dyc.shape[:-1], in_f))
    arr("dy", dyc, shape=(*x.shape[:-1], out_f))
    return dyc, xc, wc


def _linear_backward_call(
    dyc: np.ndarray,
    xc: np.ndarray,
    wc: np.ndarray,
    dx: np.ndarray | None,
    dw: np.ndarray | None,
    db: np.ndarray | None,
    act: ActivationCache | None = None,
) -> None:
    """The C call on checked operands; a None output is not computed. With
    ``act`` (and ``dx``), ``dx`` is the gradient through that activation too,
    ``(dy @ w) * act'(act.x)``: in float32 applied to each tile of dx as the
    GEMM finishes it, the bits of the two calls without a pass of its own over
    dx; in float64 the activation's backward after, in place."""
    out_f, in_f = wc.shape
    n, dt = xc.size // in_f, dyc.dtype
    hx = None if act is None or dx is None else arr("cache.x", act.x, dt, dx.shape)
    if hx is not None and dt == F32:
        status = lib.cllm_linear_backward_act(
            ptr(dyc), ptr(xc), ptr(wc), ptr(dx), ptr(dw), ptr(db), n, in_f, out_f,
            _KINDS[act.kind], ptr(hx),
        )  # fmt: skip
        check(status, "linear_backward")
        return
    status = kernel("cllm_linear_backward", dt)(
        ptr(dyc), ptr(xc), ptr(wc), ptr(dx), ptr(dw), ptr(db), n, in_f, out_f
    )
    check(status, "linear_backward")
    if hx is not None:
        status = kernel("cllm_activation_backward", dt)(
            _KINDS[act.kind], ptr(hx), ptr(dx), ptr(dx), hx.size
        )
        check(status, f"{act.kind} backward")


def _linear_backward(
    dy: np.ndarray,
    cache: LinearCache,
    dw: np.ndarray | None = None,
    db: np.ndarray | None = None,
    act: ActivationCache | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``dw``, ``db``: contiguous outputs to write into (new arrays when None);
    ``act``: see :func:`_linear_backward_call`."""
    dyc, xc, wc = _linear_backward_operands(dy, cache)
    dt, (out_f, in_f) = dyc.dtype, wc.shape
    dx = empty(xc.shape, dtype=dt)  # (..., IN)
    dw = _out("dw", dw, (out_f, in_f), dt)
    db = _out("db", db, (out_f,), dt) if cache.has_bias else None
    _linear_backward_call(dyc, xc, wc, dx, dw, db, act)
    return dx, dw, db


def _linear_backward_groups(
    dy: np.ndarray,
    cache: LinearCache,
    groups: Sequence[tuple[int, int]],
    outs: Sequence[tuple[np.ndarray, np.ndarray | None]],
    act: ActivationCache | None = None,
) -> np.ndarray:
    """``dx`` of every row, and each group's ``(dw, db)``, over the batch rows
    ``[b0, b1)`` of ``groups[i]``, into ``outs[i]``: the bits of
    :func:`_linear_backward` run on each group's rows alone (a row's dx does
    not depend on the others, and each group's dw and db are the same C call
    on the same rows); ``act``: see :func:`_linear_backward_call`."""
    dyc, xc, wc = _linear_backward_operands(dy, cache)
    dt, (out_f, in_f) = dyc.dtype, wc.shape
    dx = empty(xc.shape, dtype=dt)  # (B, ..., IN)
    _linear_backward_call(dyc, xc, wc, dx, None, None, act)
    for (b0, b1), (dw, db) in zip(groups, outs, strict=True):
        dw = _out("dw", dw, (out_f, in_f), dt)
        db = _out("db", db, (out_f,), dt) if cache.has_bias else None
        _linear_backward_call(dyc[b0:b1], xc[b0:b1], wc, None, dw, db)
    return dx


def linear_forward(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None
) -> tuple[np.ndarray, LinearCache]:
    """``y = x @ w.T + b``; ``w: (OUT, IN)`` as in torch.nn.Linear."""
    validate_linear(x, w, b)
    return _linear(x, w, b)


def linear_backward(
    dy: np.ndarray, cache: LinearCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``dx = dy @ w``, ``dw = dy^T x``, ``db = sum dy`` (None without bias)."""
    validate_linear_backward(dy, cache)
    return _linear_backward(dy, cache)


# ------------------------------------------------------------- activation ----
def _activation(x: np.ndarray, kind: str) -> tuple[np.ndarray, ActivationCache]:
    xc = arr("x", x)
    y = empty(x.shape, dtype=x.dtype)
    status = kernel("cllm_activation_forward", x.dtype)(
        _KINDS[kind], ptr(xc), ptr(y), xc.size
    )
    check(status, kind)
    return y, ActivationCache(x, kind)


def _activation_backward(dy: np.ndarray, cache: ActivationCache) -> np.ndarray:
    dyc = arr("dy", dy)
    xc = arr("cache.x", cache.x, dyc.dtype, dyc.shape)
    dx = empty(xc.shape, dtype=xc.dtype)
    status = kernel("cllm_activation_backward", xc.dtype)(
        _KINDS[cache.kind], ptr(xc), ptr(dyc), ptr(dx), xc.size
    )
    check(status, f"{cache.kind} backward")
    return dx


def activation_forward(
    x: np.ndarray, kind: Activation
) -> tuple[np.ndarray, ActivationCache]:
    """relu, gelu (erf) or gelu_tanh, elementwise."""
    validate_activation(x, kind)
    return _activation(x, str(kind))


def activation_backward(dy: np.ndarray, cache: ActivationCache) -> np.ndarray:
    """``dx = dy * act'(x)``."""
    validate_activation_backward(dy, cache)
    return _activation_backward(dy, cache)


# -------------------------------------------------------------- layernorm ----
def layernorm_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5
) -> tuple[np.ndarray, LayerNormCache]:
    """``y = (x - mean) / sqrt(var + eps) * weight + bias`` over the last axis."""
    eps = validate_layernorm(x, weight, bias, eps)
    return _layernorm(x, weight, bias, eps)


def _layernorm(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float
) -> tuple[np.ndarray, LayerNormCache]:
    xc, wc, bc = arr("x", x), arr("weight", weight), arr("bias", bias)
    c = x.shape[-1]
    rows = xc.size // c
    y = empty(x.shape, dtype=x.dtype)  # (..., C)
    x_hat = empty(x.shape, dtype=x.dtype)  # (..., C)
    rstd = empty(x.shape[:-1], dtype=x.dtype)  # (...,)
    status = kernel("cllm_layernorm_forward", x.dtype)(
        ptr(xc), ptr(wc), ptr(bc), eps, ptr(y), ptr(x_hat), ptr(rstd), rows, c
    )
    check(status, "layernorm_forward")
    return y, LayerNormCache(x_hat, rstd, weight)


def layernorm_backward(
    dy: np.ndarray, cache: LayerNormCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``dx = rstd (g - mean g - x_hat mean(g x_hat))`` with ``g = dy * weight``."""
    validate_layernorm_backward(dy, cache)
    return _layernorm_backward(dy, cache)


def _residual_layernorm(
    x: np.ndarray, res: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float
) -> tuple[np.ndarray, LayerNormCache]:
    """``x += res`` in place (x must be the caller's own contiguous array), then
    the layer norm of the sum, in one pass over each row."""
    dt = x.dtype
    rc = arr("res", res, dt, x.shape)
    wc, bc = arr("weight", weight, dt), arr("bias", bias, dt)
    if not (x.flags.c_contiguous and x.flags.writeable):
        raise ShapeError("x: expected a writable C-contiguous residual stream")
    c = x.shape[-1]
    rows = x.size // c
    arr("weight", wc, shape=(c,))
    arr("bias", bc, shape=(c,))
    y = empty(x.shape, dtype=dt)  # (..., C)
    x_hat = empty(x.shape, dtype=dt)  # (..., C)
    rstd = empty(x.shape[:-1], dtype=dt)  # (...,)
    status = kernel("cllm_residual_layernorm_forward", dt)(
        ptr(x), ptr(rc), ptr(wc), ptr(bc), eps, ptr(x), ptr(y), ptr(x_hat),
        ptr(rstd), rows, c,
    )  # fmt: skip
    check(status, "residual_layernorm_forward")
    return y, LayerNormCache(x_hat, rstd, weight)


def _layernorm_backward(
    dy: np.ndarray,
    cache: LayerNormCache,
    dweight: np.ndarray | None = None,
    dbias: np.ndarray | None = None,
    add_to: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``add_to``: the caller's own contiguous array to add dx into (and
    return), as the residual stream's gradient; a new dx when None."""
    dyc = arr("dy", dy)
    dt = dyc.dtype
    x_hat = arr("cache.x_hat", cache.x_hat, dt, dyc.shape)
    c = x_hat.shape[-1]
    rows = x_hat.size // c
    rstd = arr("cache.rstd", cache.rstd, dt, x_hat.shape[:-1])
    wc = arr("cache.weight", cache.weight, dt, (c,))
    dx = _out("add_to", add_to, x_hat.shape, dt)  # (..., C)
    dweight = _out("dweight", dweight, (c,), dt)
    dbias = _out("dbias", dbias, (c,), dt)
    name = (
        "cllm_layernorm_backward" if add_to is None else "cllm_layernorm_backward_add"
    )
    status = kernel(name, dt)(
        ptr(dyc), ptr(x_hat), ptr(rstd), ptr(wc), ptr(dx), ptr(dweight), ptr(dbias),
        rows, c,
    )  # fmt: skip
    check(status, "layernorm_backward")
    return dx, dweight, dbias


# -------------------------------------------------------------------- ffn ----
def ffn_forward(
    x: np.ndarray,
    w_fc: np.ndarray,
    b_fc: np.ndarray | None,
    w_proj: np.ndarray,
    b_proj: np.ndarray | None,
    *,
    activation: Activation = "gelu",
) -> tuple[np.ndarray, FFNCache]:
    """``linear(activation(linear(x, w_fc, b_fc)), w_proj, b_proj)``."""
    validate_ffn(x, w_fc, b_fc, w_proj, b_proj, activation)
    return _ffn(x, w_fc, b_fc, w_proj, b_proj, str(activation))


def _ffn(
    x: np.ndarray,
    w_fc: np.ndarray,
    b_fc: np.ndarray | None,
    w_proj: np.ndarray,
    b_proj: np.ndarray | None,
    activation: str,
) -> tuple[np.ndarray, FFNCache]:
    kind = str(activation)
    if x.dtype == F32:  # one C call for the block (csrc/ffn.c cllm_ffn_forward)
        xc, wf, wp = arr("x", x), arr("w_fc", w_fc), arr("w_proj", w_proj)
        bf = None if b_fc is None else arr("b_fc", b_fc)
        bp = None if b_proj is None else arr("b_proj", b_proj)
        (f, c), lead = wf.shape, x.shape[:-1]
        h, a = empty((*lead, f), dtype=F32), empty((*lead, f), dtype=F32)
        y = empty((*lead, c), dtype=F32)
        status = lib.cllm_ffn_forward(
            ptr(xc), ptr(wf), ptr(bf), ptr(wp), ptr(bp), _KINDS[kind], ptr(h),
            ptr(a), ptr(y), xc.size // c, c, f,
        )  # fmt: skip
        check(status, "ffn_forward")
        return y, FFNCache(
            LinearCache(x, w_fc, b_fc is not None),
            ActivationCache(h, kind),
            LinearCache(a, w_proj, b_proj is not None),
        )
    h, fc = _linear(x, w_fc, b_fc)  # (..., F)
    a, act = _activation(h, str(activation))  # (..., F)
    y, proj = _linear(a, w_proj, b_proj)  # (..., C)
    return y, FFNCache(fc, act, proj)


def ffn_backward(
    dy: np.ndarray, cache: FFNCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
    """(dx, dw_fc, db_fc, dw_proj, db_proj); bias grads are None without bias."""
    validate_ffn_backward(dy, cache)
    return _ffn_backward(dy, cache, checked=True)


def _ffn_backward(
    dy: np.ndarray,
    cache: FFNCache,
    out: tuple[np.ndarray, ...] | None = None,
    *,
    checked: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
    """``out``: (dw_fc, db_fc, dw_proj, db_proj) to write into, or None.

    ``checked`` re-validates the inner caches against the gradients that reach
    them (a caller's cache may be inconsistent); the model's own caches are
    consistent by construction and skip it.
    """
    dw_fc, db_fc, dw_proj, db_proj = out or (None,) * 4
    if checked:  # against the (..., F) gradient the projection gives
        da_like = np.broadcast_to(np.zeros((), dy.dtype), np.shape(cache.proj.x))
        validate_activation_backward(da_like, cache.act)
    # the activation's backward fused into the projection's input gradient
    dh, dw_proj, db_proj = _linear_backward(
        dy, cache.proj, dw_proj, db_proj, act=cache.act
    )  # (..., F)
    if checked:
        validate_linear_backward(dh, cache.fc)
    dx, dw_fc, db_fc = _linear_backward(dh, cache.fc, dw_fc, db_fc)  # (..., C)
    return dx, dw_fc, db_fc, dw_proj, db_proj


def _ffn_backward_groups(
    dy: np.ndarray,
    cache: FFNCache,
    groups: Sequence[tuple[int, int]],
    outs: Sequence[tuple[np.ndarray, ...]],
) -> np.ndarray:
    """:func:`_ffn_backward` with each group's parameter gradients (batch rows
    ``groups[i]``) into ``outs[i] = (dw_fc, db_fc, dw_proj, db_proj)``."""
    proj = [(o[2], o[3]) for o in outs]
    dh = _linear_backward_groups(dy, cache.proj, groups, proj, act=cache.act)
    return _linear_backward_groups(dh, cache.fc, groups, [(o[0], o[1]) for o in outs])
