"""The Backend protocol: what a backend must provide, component by component.

A backend is any module (or object) with these attributes; there is no base class.
The math, shapes, dtypes and error contract of each function are in the spec
module of its component (``cllm_spec/<component>.py``); this file fixes the
signatures and the cache types, so that one backend's forward can feed another
backend's backward and the suite can compare saved statistics.

Conventions shared by every function:

- Float arrays are float32 or float64; all float arguments of one call share a
  dtype and the outputs have it too. Ids are int32 or int64.
- No function mutates its inputs (the KV cache buffers are the one documented
  exception: ``kv_cache_append``, and ``mha_forward`` with a cache, write into
  their preallocated storage; read-only buffers raise ``ReadOnlyError`` before
  anything is written, on every backend).
- ``x_forward(...) -> (out, cache)`` and ``x_backward(dout, cache) -> grads``;
  gradients come back as new arrays in the order the docstring gives. A cache
  must be the NamedTuple its forward returned, with fields of the kinds in
  ``cllm_spec.checks.CACHE_FIELDS`` (else ``DTypeError``).
- Bad input raises the typed errors of :mod:`cllm_spec.errors`, and nothing
  else: a malformed argument never surfaces as AttributeError, IndexError,
  OverflowError or a bare TypeError (``conformance/test_fuzz.py``).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

import numpy as np

Reduction = Literal["mean", "sum", "none"]
Activation = Literal["gelu", "gelu_tanh", "relu"]
GeluApproximate = Literal["none", "tanh"]


# ---------------------------------------------------------------- batching ----
class Batch(NamedTuple):
    """One training batch: ``input_ids``, ``targets``, ``mask``: (B, T) int32.

    ``mask[b, t] == 1`` where the position counts toward the loss, 0 for padding.
    """

    input_ids: np.ndarray
    targets: np.ndarray
    mask: np.ndarray


class PoolStats(NamedTuple):
    """Counters of a BatchPool since creation."""

    allocations: int  # successful acquires
    releases: int  # releases that returned a batch to the pool
    hits: int  # acquires served without waiting
    misses: int  # try_acquire calls that found the pool empty


class PooledBatch(Protocol):
    """A batch lent by a pool: ``batch`` holds its preallocated arrays."""

    @property
    def batch(self) -> Batch: ...

    @property
    def slot(self) -> int: ...


class BatchQueue(Protocol):
    """Bounded multi-producer multi-consumer FIFO (spec: ``cllm_spec.batching``)."""

    @property
    def capacity(self) -> int: ...

    @property
    def closed(self) -> bool: ...

    def __len__(self) -> int: ...

    def put(self, item: Any, timeout: float | None = None) -> None: ...

    def try_put(self, item: Any) -> bool: ...

    def get(self, timeout: float | None = None) -> Any: ...

    def try_get(self) -> Any | None: ...

    def close(self) -> None: ...


class BatchPool(Protocol):
    """Fixed set of preallocated, refcounted batches (spec: ``cllm_spec.batching``)."""

    @property
    def size(self) -> int: ...

    @property
    def available(self) -> int: ...

    @property
    def closed(self) -> bool: ...

    def acquire(self, timeout: float | None = None) -> PooledBatch: ...

    def try_acquire(self) -> PooledBatch | None: ...

    def retain(self, item: PooledBatch) -> None: ...

    def release(self, item: PooledBatch) -> None: ...

    def refcount(self, item: PooledBatch) -> int: ...

    def stats(self) -> PoolStats: ...

    def close(self) -> None: ...


# ------------------------------------------------------------------ losses ----
class SoftmaxCache(NamedTuple):
    y: np.ndarray  # (..., V) softmax output


class LogSoftmaxCache(NamedTuple):
    y: np.ndarray  # (..., V) log-softmax output


class CrossEntropyCache(NamedTuple):
    probs: np.ndarray  # (N, V) softmax(logits)
    targets: np.ndarray  # (N,) int
    weight: np.ndarray  # (N,) 1/count for mean, 1 for sum/none, 0 where ignored
    label_smoothing: float
    reduction: str


class RegressionLossCache(NamedTuple):
    diff: np.ndarray  # (...) pred - target
    reduction: str
    delta: float  # huber delta; unused by mse and l1


# --------------------------------------------------------------- gradients ----
class GradStats(NamedTuple):
    norm: float  # L2 norm over finite and non-finite elements alike
    min: float
    max: float
    mean: float
    nonfinite: int  # count of NaN and +-inf elements


# ------------------------------------------------------------------- optim ----
class SGDState(NamedTuple):
    momentum_buffer: np.ndarray  # (P,) valid once step >= 1 and momentum != 0
    step: int


class AdamState(NamedTuple):
    exp_avg: np.ndarray  # (P,) first moment m
    exp_avg_sq: np.ndarray  # (P,) second moment v
    max_exp_avg_sq: np.ndarray  # (P,) running max of v (amsgrad only)
    step: int


class RMSpropState(NamedTuple):
    square_avg: np.ndarray  # (P,)
    momentum_buffer: np.ndarray  # (P,)
    grad_avg: np.ndarray  # (P,) centered only
    step: int


class AdagradState(NamedTuple):
    sum: np.ndarray  # (P,) running sum of squared gradients
    step: int


# --------------------------------------------------------------- attention ----
class AttentionCache(NamedTuple):
    q: np.ndarray  # (B, NH, Tq, HS)
    k: np.ndarray  # (B, NH, Tk, HS)
    v: np.ndarray  # (B, NH, Tk, HS)
    att: np.ndarray  # (B, NH, Tq, Tk) attention weights after softmax and masking
    scale: float


class KVCache(NamedTuple):
    """Preallocated keys and values of one attention layer.

    ``k`` and ``v`` are (B, NH, T_max, HS); positions ``[0, length)`` are valid.
    """

    k: np.ndarray
    v: np.ndarray
    length: int


class LinearCache(NamedTuple):
    x: np.ndarray  # (..., IN)
    w: np.ndarray  # (OUT, IN)
    has_bias: bool


class MHACache(NamedTuple):
    qkv: LinearCache
    attn: AttentionCache
    proj: LinearCache
    n_head: int


# --------------------------------------------------------------------- ffn ----
class ActivationCache(NamedTuple):
    x: np.ndarray  # (...) the activation's input
    kind: str  # "relu", "gelu" or "gelu_tanh"


class LayerNormCache(NamedTuple):
    x_hat: np.ndarray  # (..., C) normalized input
    rstd: np.ndarray  # (...,) 1/sqrt(var + eps)
    weight: np.ndarray  # (C,)


class FFNCache(NamedTuple):
    fc: LinearCache
    act: ActivationCache
    proj: LinearCache


# --------------------------------------------------------------- embedding ----
class EmbeddingCache(NamedTuple):
    ids: np.ndarray  # (B, T) int
    vocab_size: int
    n_positions: int  # T_max of the position table
    pos_offset: int


# ----------------------------------------------------------------- backend ----
@runtime_checkable
class Backend(Protocol):
    """Everything the spec asks of a backend. See each component's spec module."""

    name: str
    version: str
    dtypes: tuple[np.dtype, ...]

    def build_info(self) -> dict[str, Any]: ...

    # batching (cllm_spec.batching)
    def make_batch_queue(self, capacity: int) -> BatchQueue: ...

    def make_batch_pool(
        self, size: int, batch_size: int, seq_len: int
    ) -> BatchPool: ...

    # losses (cllm_spec.losses)
    def softmax_forward(self, x: np.ndarray) -> tuple[np.ndarray, SoftmaxCache]: ...

    def softmax_backward(self, dy: np.ndarray, cache: SoftmaxCache) -> np.ndarray: ...

    def log_softmax_forward(
        self, x: np.ndarray
    ) -> tuple[np.ndarray, LogSoftmaxCache]: ...

    def log_softmax_backward(
        self, dy: np.ndarray, cache: LogSoftmaxCache
    ) -> np.ndarray: ...

    def cross_entropy_forward(
        self,
        logits: np.ndarray,
        targets: np.ndarray,
        *,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        reduction: Reduction = "mean",
    ) -> tuple[np.ndarray, CrossEntropyCache]: ...

    def cross_entropy_backward(
        self, dloss: np.ndarray, cache: CrossEntropyCache
    ) -> np.ndarray: ...

    def mse_forward(
        self, pred: np.ndarray, target: np.ndarray, *, reduction: Reduction = "mean"
    ) -> tuple[np.ndarray, RegressionLossCache]: ...

    def mse_backward(
        self, dloss: np.ndarray, cache: RegressionLossCache
    ) -> np.ndarray: ...

    def l1_forward(
        self, pred: np.ndarray, target: np.ndarray, *, reduction: Reduction = "mean"
    ) -> tuple[np.ndarray, RegressionLossCache]: ...

    def l1_backward(
        self, dloss: np.ndarray, cache: RegressionLossCache
    ) -> np.ndarray: ...

    def huber_forward(
        self,
        pred: np.ndarray,
        target: np.ndarray,
        *,
        delta: float = 1.0,
        reduction: Reduction = "mean",
    ) -> tuple[np.ndarray, RegressionLossCache]: ...

    def huber_backward(
        self, dloss: np.ndarray, cache: RegressionLossCache
    ) -> np.ndarray: ...

    # gradients (cllm_spec.gradients); g is a flat (P,) buffer
    def grad_global_norm(self, g: np.ndarray, norm_type: float = 2.0) -> float: ...

    def clip_grad_norm(
        self, g: np.ndarray, max_norm: float, norm_type: float = 2.0
    ) -> tuple[np.ndarray, float]: ...

    def clip_grad_value(self, g: np.ndarray, clip_value: float) -> np.ndarray: ...

    def grad_stats(self, g: np.ndarray) -> GradStats: ...

    def grad_accumulate(self, acc: np.ndarray, g: np.ndarray) -> np.ndarray: ...

    def grad_scale(self, g: np.ndarray, factor: float) -> np.ndarray: ...

    def grad_tree_reduce(self, buffers: list[np.ndarray]) -> np.ndarray: ...

    # optim (cllm_spec.optim); params and grads are flat (P,) buffers
    def sgd_step(
        self,
        params: np.ndarray,
        grads: np.ndarray,
        state: SGDState,
        *,
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> tuple[np.ndarray, SGDState]: ...

    def adam_step(
        self,
        params: np.ndarray,
        grads: np.ndarray,
        state: AdamState,
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ) -> tuple[np.ndarray, AdamState]: ...

    def adamw_step(
        self,
        params: np.ndarray,
        grads: np.ndarray,
        state: AdamState,
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
    ) -> tuple[np.ndarray, AdamState]: ...

    def rmsprop_step(
        self,
        params: np.ndarray,
        grads: np.ndarray,
        state: RMSpropState,
        *,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
    ) -> tuple[np.ndarray, RMSpropState]: ...

    def adagrad_step(
        self,
        params: np.ndarray,
        grads: np.ndarray,
        state: AdagradState,
        *,
        lr: float = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        eps: float = 1e-10,
    ) -> tuple[np.ndarray, AdagradState]: ...

    # attention (cllm_spec.attention)
    def attention_forward(
        self,
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        *,
        causal: bool = True,
        key_padding_mask: np.ndarray | None = None,
    ) -> tuple[np.ndarray, AttentionCache]: ...

    def attention_backward(
        self, dout: np.ndarray, cache: AttentionCache
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def kv_cache_new(
        self, batch: int, n_head: int, t_max: int, head_size: int, dtype: Any
    ) -> KVCache: ...

    def kv_cache_append(
        self, cache: KVCache, k: np.ndarray, v: np.ndarray
    ) -> KVCache: ...

    def kv_cache_reset(self, cache: KVCache) -> KVCache: ...

    def mha_forward(
        self,
        x: np.ndarray,
        w_qkv: np.ndarray,
        b_qkv: np.ndarray | None,
        w_proj: np.ndarray,
        b_proj: np.ndarray | None,
        *,
        n_head: int,
        kv_cache: KVCache | None = None,
    ) -> tuple[np.ndarray, MHACache, KVCache | None]: ...

    def mha_backward(
        self, dy: np.ndarray, cache: MHACache
    ) -> tuple[
        np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None
    ]: ...

    # ffn (cllm_spec.ffn)
    def linear_forward(
        self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None
    ) -> tuple[np.ndarray, LinearCache]: ...

    def linear_backward(
        self, dy: np.ndarray, cache: LinearCache
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]: ...

    def activation_forward(
        self, x: np.ndarray, kind: Activation
    ) -> tuple[np.ndarray, ActivationCache]: ...

    def activation_backward(
        self, dy: np.ndarray, cache: ActivationCache
    ) -> np.ndarray: ...

    def layernorm_forward(
        self, x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5
    ) -> tuple[np.ndarray, LayerNormCache]: ...

    def layernorm_backward(
        self, dy: np.ndarray, cache: LayerNormCache
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def ffn_forward(
        self,
        x: np.ndarray,
        w_fc: np.ndarray,
        b_fc: np.ndarray | None,
        w_proj: np.ndarray,
        b_proj: np.ndarray | None,
        *,
        activation: Activation = "gelu",
    ) -> tuple[np.ndarray, FFNCache]: ...

    def ffn_backward(
        self, dy: np.ndarray, cache: FFNCache
    ) -> tuple[
        np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None
    ]: ...

    # embedding (cllm_spec.embedding)
    def embedding_forward(
        self, ids: np.ndarray, wte: np.ndarray, wpe: np.ndarray, pos_offset: int = 0
    ) -> tuple[np.ndarray, EmbeddingCache]: ...

    def embedding_backward(
        self, dx: np.ndarray, cache: EmbeddingCache
    ) -> tuple[np.ndarray, np.ndarray]: ...


#: Every callable a backend must expose, by component; the suite checks each one.
COMPONENT_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "batching": ("make_batch_queue", "make_batch_pool"),
    "losses": (
        "softmax_forward",
        "softmax_backward",
        "log_softmax_forward",
        "log_softmax_backward",
        "cross_entropy_forward",
        "cross_entropy_backward",
        "mse_forward",
        "mse_backward",
        "l1_forward",
        "l1_backward",
        "huber_forward",
        "huber_backward",
    ),
    "gradients": (
        "grad_global_norm",
        "clip_grad_norm",
        "clip_grad_value",
        "grad_stats",
        "grad_accumulate",
        "grad_scale",
        "grad_tree_reduce",
    ),
    "optim": ("sgd_step", "adam_step", "adamw_step", "rmsprop_step", "adagrad_step"),
    "attention": (
        "attention_forward",
        "attention_backward",
        "kv_cache_new",
        "kv_cache_append",
        "kv_cache_reset",
        "mha_forward",
        "mha_backward",
    ),
    "ffn": (
        "linear_forward",
        "linear_backward",
        "activation_forward",
        "activation_backward",
        "layernorm_forward",
        "layernorm_backward",
        "ffn_forward",
        "ffn_backward",
    ),
    "embedding": ("embedding_forward", "embedding_backward"),
}
