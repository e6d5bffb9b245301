"""The GPT model's configuration and parameters: :class:`ModelConfig`, the
canonical tensor names and the flat-buffer layout, and initialization.

:mod:`cllm_spec.model` composes the forward and backward on these; it
re-exports every public name here, so ``from cllm_spec.model import
ModelConfig, init_params`` keeps working. Shape letters as there: V vocabulary
size, C = n_embd, L = n_layer, NH = n_head, F = n_hidden, T_max = block_size,
P parameter count.

Canonical parameter names
=========================

These names and shapes are the spec's tensor names: the flat buffer is laid out
in this order, and a checkpoint stores each under this name::

    model.wte.weight                 (V, C)       token embedding
    model.wpe.weight                 (T_max, C)   position embedding
    model.h.{i}.ln_1.weight          (C,)         for i in 0 .. L-1
    model.h.{i}.ln_1.bias            (C,)
    model.h.{i}.attn.qkv.weight      (3C, C)      rows: q, k, v; head h of q is
    model.h.{i}.attn.qkv.bias        (3C,)        rows h*HS .. (h+1)*HS - 1
    model.h.{i}.attn.proj.weight     (C, C)
    model.h.{i}.attn.proj.bias       (C,)
    model.h.{i}.ln_2.weight          (C,)
    model.h.{i}.ln_2.bias            (C,)
    model.h.{i}.mlp.fc.weight        (F, C)       linear weights are (OUT, IN)
    model.h.{i}.mlp.fc.bias          (F,)
    model.h.{i}.mlp.proj.weight      (C, F)
    model.h.{i}.mlp.proj.bias        (C,)
    model.ln_f.weight                (C,)
    model.ln_f.bias                  (C,)
    model.lm_head.weight             (V, C)       only when tie_embeddings is False

so that::

    P = V*C + T_max*C + L*(4*C^2 + 2*C*F + 9*C + F) + 2*C  (+ V*C if untied)

(per block: 2C + 2C layer norms, 3C^2 + 3C QKV, C^2 + C projection,
F*C + F fc, C*F + C proj.)

Initialization
==============

``init_params(cfg, rng, dtype)`` draws every value in float64 and rounds once to
``dtype`` (so a float32 and a float64 model from one seed start from the same
numbers, up to that rounding):

* ``"gpt2"``: every weight matrix and both embeddings ~ N(0, 0.02^2); the
  residual projections ``attn.proj.weight`` and ``mlp.proj.weight`` ~ N(0,
  (0.02 / sqrt(2L))^2), so the residual stream's variance does not grow with
  depth (GPT-2, nanoGPT); biases 0; LayerNorm weights 1, biases 0.
* ``"lattice"``: as ``"gpt2"``, except the token embedding is the original
  project's deterministic "geometric lattice" embedding (:func:`lattice_embedding`):
  token t sits on a ring of a clock face,

  ======= ============ ============ ========================= ======
  ring r  tokens t     position p   angle a                   N_r
  ======= ============ ============ ========================= ======
  0       0 .. 11      t            (p - 3) * 2 pi / 12       12
  1       12 .. 71     t - 12       (p - 15) * 2 pi / 60      60
  2       72 .. 131    t - 72       (p - 15) * 2 pi / 60      60
  3       132 .. 231   t - 132      (p - 25) * 2 pi / 100     100
  4       232 ..       t - 232      p * 2 pi / 1000           1000
  ======= ============ ============ ========================= ======

  and for each channel j, with phi_j = DIMENSIONAL_FREQUENCIES[j mod 12]::

      O       = min(r + p / N_r, 200)
      L[t, j] = 3^O * cos(a * phi_j) * cos(2 pi (t mod 12) / 12)
                    * tanh(1 + 0.1 r + 0.01 j)
      E[t, j] = tanh(L[t, j] / 100)                   in [-1, 1]

  The cap on O only keeps 3^O finite in float64 for vocabularies beyond ~200k
  tokens; tanh is exactly +-1 in float64 once |L| / 100 > 20, so the cap changes
  nothing unless the cosine product is below ~1e-91. As in the original, tokens
  with t mod 12 in {3, 9} get embeddings of about 1e-17 (cos(pi/2) = 0): the
  option reproduces the seed's initializer, defects included.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from cllm_spec import checks
from cllm_spec.errors import ConfigError
from cllm_spec.gradients import ParamLayout

ACTIVATIONS = ("gelu", "gelu_tanh", "relu")
INITS = ("gpt2", "lattice")
INIT_STD = 0.02
#: The original project's frequency table; the lattice embedding uses its first 12.
DIMENSIONAL_FREQUENCIES = (3, 7, 31, 12, 19, 5, 11, 13, 17, 23, 29, 37)
_RING_STARTS = np.array([0, 12, 72, 132, 232])
_RING_SIZES = np.array([12.0, 60.0, 60.0, 100.0, 1000.0])
_RING_ANGLE_SHIFTS = np.array([3.0, 15.0, 15.0, 25.0, 0.0])
_LATTICE_MAX_EXPONENT = 200.0


# ------------------------------------------------------------------ config ----
@dataclass(frozen=True)
class ModelConfig:
    """The shape of a GPT model; every field is checked when it is built.

    ``n_hidden = 0`` (the default) means F = 4 * n_embd and is replaced by that
    value at construction, so ``cfg.n_hidden`` is always the real F.
    """

    vocab_size: int  # V
    n_embd: int  # C
    n_layer: int  # L
    n_head: int  # NH, divides C
    block_size: int  # T_max, rows of the position table
    n_hidden: int = 0  # F; 0 means 4 * C
    activation: str = "gelu"  # gelu | gelu_tanh | relu
    tie_embeddings: bool = True  # LM head shares wte
    init: str = "gpt2"  # gpt2 | lattice

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_embd", "n_layer", "n_head", "block_size"):
            checks.expect_positive_int(name, getattr(self, name))
        hidden = self.n_hidden
        if isinstance(hidden, bool) or not isinstance(hidden, int | np.integer):
            raise ConfigError(f"n_hidden: expected an int, got {type(hidden).__name__}")
        if hidden < 0:
            raise ConfigError(
                f"n_hidden: expected >= 0 (0 means 4 * n_embd), got {hidden}"
            )
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"n_head: must divide n_embd={self.n_embd}, got {self.n_head}"
            )
        checks.expect_choice("activation", self.activation, ACTIVATIONS)
        checks.expect_choice("init", self.init, INITS)
        if not isinstance(self.tie_embeddings, bool):
            raise ConfigError(
                f"tie_embeddings: expected a bool, got "
                f"{type(self.tie_embeddings).__name__}"
            )
        # Frozen: normalize through object.__setattr__ so equal models compare equal.
        for name in ("vocab_size", "n_embd", "n_layer", "n_head", "block_size"):
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "n_hidden", int(hidden) or 4 * self.n_embd)

    @property
    def head_size(self) -> int:
        """HS = C / NH."""
        return self.n_embd // self.n_head

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-ready values (``n_hidden`` resolved)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; an unknown or missing key is a ConfigError."""
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"model config: expected a mapping, got {type(data).__name__}"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"model config: unknown field(s) {unknown}")
        required = ("vocab_size", "n_embd", "n_layer", "n_head", "block_size")
        missing = [k for k in required if k not in data]
        if missing:
            raise ConfigError(f"model config: missing field(s) {missing}")
        return cls(**dict(data))


# -------------------------------------------------------------- parameters ----
#: The parameter names under a layer norm's prefix, and under a block's prefix
#: for its MLP and attention, in the order their kernels' backward returns
#: (and, with ``out=``, takes) their gradients.
LN_PARAMS = ("weight", "bias")
MLP_PARAMS = ("mlp.fc.weight", "mlp.fc.bias", "mlp.proj.weight", "mlp.proj.bias")
ATTN_PARAMS = ("attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias")


def head_param(cfg: ModelConfig) -> str:
    """The LM head's weight: the token embedding when tied."""
    return "model.wte.weight" if cfg.tie_embeddings else "model.lm_head.weight"


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape, in flat-buffer order (see the module docstring)."""
    v, c, f, t_max = cfg.vocab_size, cfg.n_embd, cfg.n_hidden, cfg.block_size
    shapes: dict[str, tuple[int, ...]] = {
        "model.wte.weight": (v, c),
        "model.wpe.weight": (t_max, c),
    }
    for i in range(cfg.n_layer):
        p = f"model.h.{i}."
        shapes.update(
            {
                p + "ln_1.weight": (c,),
                p + "ln_1.bias": (c,),
                p + "attn.qkv.weight": (3 * c, c),
                p + "attn.qkv.bias": (3 * c,),
                p + "attn.proj.weight": (c, c),
                p + "attn.proj.bias": (c,),
                p + "ln_2.weight": (c,),
                p + "ln_2.bias": (c,),
                p + "mlp.fc.weight": (f, c),
                p + "mlp.fc.bias": (f,),
                p + "mlp.proj.weight": (c, f),
                p + "mlp.proj.bias": (c,),
            }
        )
    shapes["model.ln_f.weight"] = (c,)
    shapes["model.ln_f.bias"] = (c,)
    if not cfg.tie_embeddings:
        shapes["model.lm_head.weight"] = (v, c)
    return shapes


@functools.lru_cache(maxsize=64)
def param_layout(cfg: ModelConfig) -> ParamLayout:
    """The flat-buffer layout of ``cfg``'s parameters (one object per config:
    a layout is immutable, and every forward and backward asks for it)."""
    return ParamLayout(param_shapes(cfg))


def param_count(cfg: ModelConfig) -> int:
    """P by closed formula; equals ``param_layout(cfg).size``.

    The original project counted ``V*D + L*(3*D^2 + 2*D*F + D + F + 4*D)``: it
    had no position table (T_max*C), bias-free Q, K, V and no output projection
    (3*D^2 where we have 4*C^2 + 4*C), and no final LayerNorm (2*C). So ours
    exceeds it by ``T_max*C + L*(C^2 + 4*C) + 2*C`` (+ V*C untied).
    """
    v, c, f, t_max, n = (
        cfg.vocab_size,
        cfg.n_embd,
        cfg.n_hidden,
        cfg.block_size,
        cfg.n_layer,
    )
    head = 0 if cfg.tie_embeddings else v * c
    return v * c + t_max * c + n * (4 * c * c + 2 * c * f + 9 * c + f) + 2 * c + head


def param_views(cfg: ModelConfig, flat: np.ndarray) -> dict[str, np.ndarray]:
    """Named views into ``flat: (P,)``; writing a view writes the buffer."""
    return param_layout(cfg).views(flat)


def _residual_projection(name: str) -> bool:
    return name.endswith(("attn.proj.weight", "mlp.proj.weight"))


def init_params(
    cfg: ModelConfig, rng: np.random.Generator, dtype: Any = np.float32
) -> np.ndarray:
    """A new flat (P,) buffer initialized as ``cfg.init`` says (module docstring).

    Values are drawn tensor by tensor in layout order from ``rng``; the lattice
    embedding consumes no random numbers.
    """
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(
            f"rng: expected a numpy.random.Generator, got {type(rng).__name__}"
        )
    layout = param_layout(cfg)
    flat = layout.zeros(dtype)  # DTypeError unless float32/float64
    residual_std = INIT_STD / math.sqrt(2 * cfg.n_layer)
    for name, view in layout.views(flat).items():  # per tensor, not per element
        if name.endswith(".bias"):
            continue  # zeros already
        if ".ln_" in name:
            view[...] = 1.0
        elif name == "model.wte.weight" and cfg.init == "lattice":
            view[...] = lattice_embedding(cfg.vocab_size, cfg.n_embd)
        else:
            std = residual_std if _residual_projection(name) else INIT_STD
            view[...] = std * rng.standard_normal(view.shape)
    return flat


def lattice_embedding(vocab_size: int, n_embd: int) -> np.ndarray:
    """The original's geometric lattice token embedding E: (V, C) float64.

    See the module docstring for the formula; every value lies in [-1, 1].
    """
    v = checks.expect_positive_int("vocab_size", vocab_size)
    c = checks.expect_positive_int("n_embd", n_embd)
    t = np.arange(v)
    ring = np.searchsorted(_RING_STARTS[1:], t, side="right")  # (V,) in 0..4
    pos = (t - _RING_STARTS[ring]).astype(np.float64)
    size = _RING_SIZES[ring]
    angle = (pos - _RING_ANGLE_SHIFTS[ring]) * (2.0 * np.pi / size)
    exponent = np.minimum(ring + pos / size, _LATTICE_MAX_EXPONENT)
    clock = np.cos(2.0 * np.pi * (t % 12) / 12.0)  # (V,)
    j = np.arange(c)
    phi = np.asarray(DIMENSIONAL_FREQUENCIES, dtype=np.float64)[j % 12]  # (C,)
    damp = np.tanh(1.0 + 0.1 * ring[:, None] + 0.01 * j[None, :])  # (V, C)
    lattice = (
        (3.0**exponent * clock)[:, None] * np.cos(angle[:, None] * phi[None, :]) * damp
    )  # (V, C)
    embedding: np.ndarray = np.tanh(lattice / 100.0)
    return embedding


__all__ = [
    "ACTIVATIONS",
    "ATTN_PARAMS",
    "DIMENSIONAL_FREQUENCIES",
    "INITS",
    "INIT_STD",
    "LN_PARAMS",
    "MLP_PARAMS",
    "ModelConfig",
    "head_param",
    "init_params",
    "lattice_embedding",
    "param_count",
    "param_layout",
    "param_shapes",
    "param_views",
]
