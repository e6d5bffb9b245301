"""A training state as a checkpoint holds it: the parameters and the
optimizer state as named tensors, and the RNG state as JSON.

The names, and which optimizer state fields a file may leave out, are
specified in "Tensors" of :mod:`cllm_spec.checkpoint`; this module converts
between them and the flat (P,) buffers and state NamedTuples of training,
without copying on the way out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from cllm_spec.errors import ConfigError
from cllm_spec.model import ModelConfig, param_layout
from cllm_spec.protocols import AdagradState, AdamState, RMSpropState, SGDState

OPTIMIZER_STATES: dict[str, Any] = {  # name -> state NamedTuple class
    "sgd": SGDState,
    "adam": AdamState,
    "adamw": AdamState,
    "rmsprop": RMSpropState,
    "adagrad": AdagradState,
}
# State fields a checkpoint leaves out when every bit is zero, as it always is
# for an option that is off (amsgrad), and restores as zeros.
ZERO_OPTIONAL_FIELDS = ("max_exp_avg_sq",)


def model_tensors(cfg: ModelConfig, params: np.ndarray) -> dict[str, np.ndarray]:
    """Canonical name -> view of ``params: (P,)`` (no copy)."""
    return param_layout(cfg).views(params)


def params_from_tensors(
    cfg: ModelConfig, tensors: Mapping[str, np.ndarray]
) -> np.ndarray:
    """The flat (P,) buffer of the ``model.*`` tensors, in their dtype."""
    layout = param_layout(cfg)
    return layout.flatten({name: tensors[name] for name in layout})


def optimizer_fields(name: str) -> tuple[str, ...]:
    """The array fields of optimizer ``name``'s state (``step`` excluded)."""
    state = OPTIMIZER_STATES.get(name)
    if state is None:
        raise ConfigError(
            f"optimizer: expected one of {sorted(OPTIMIZER_STATES)}, got {name!r}"
        )
    return tuple(f for f in state._fields if f != "step")


def optimizer_tensors(
    cfg: ModelConfig, name: str, state: NamedTuple
) -> dict[str, np.ndarray]:
    """``optim.<field>.<parameter name>`` -> view of the state's flat buffers.

    A field of ZERO_OPTIONAL_FIELDS whose every bit is zero is left out
    (``max_exp_avg_sq`` without amsgrad: a quarter of an AdamW checkpoint);
    :func:`optimizer_state_from_tensors` restores it as zeros, bit for bit.
    """
    layout = param_layout(cfg)
    out = {}
    for field in optimizer_fields(name):
        buffer = np.asarray(getattr(state, field))
        if field in ZERO_OPTIONAL_FIELDS and _all_bits_zero(buffer):
            continue
        for pname, view in layout.views(buffer).items():
            out[f"optim.{field}.{pname}"] = view
    return out


def _all_bits_zero(arr: np.ndarray) -> bool:
    """Every element is +0 (a -0.0 is not: its sign bit would be lost)."""
    return not arr.any() and not np.signbit(arr).any()


def optimizer_state_from_tensors(
    cfg: ModelConfig, name: str, tensors: Mapping[str, np.ndarray], step: int
) -> Any:
    """Rebuild the state NamedTuple of optimizer ``name`` from its tensors; a
    field of ZERO_OPTIONAL_FIELDS that the tensors leave out is zeros of the
    parameters' dtype."""
    layout = param_layout(cfg)
    dtype = next(tensors[p] for p in layout).dtype
    arrays = {}
    for field in optimizer_fields(name):
        names = {p: f"optim.{field}.{p}" for p in layout}
        if field in ZERO_OPTIONAL_FIELDS and not any(
            n in tensors for n in names.values()
        ):
            arrays[field] = np.zeros(layout.size, dtype=dtype)
        else:
            arrays[field] = layout.flatten({p: tensors[n] for p, n in names.items()})
    return OPTIMIZER_STATES[name](**arrays, step=int(step))


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """The JSON-ready state of ``rng`` (``rng.bit_generator.state``)."""
    return dict(rng.bit_generator.state)


def rng_from_state(state: Mapping[str, Any]) -> np.random.Generator:
    """A Generator that continues exactly where the one of ``state`` stood."""
    name = state.get("bit_generator") if isinstance(state, Mapping) else None
    cls = getattr(np.random, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, np.random.BitGenerator)):
        raise ConfigError(f"rng_state: unknown bit generator {name!r}")
    bit_generator = cls()
    bit_generator.state = dict(state)
    return np.random.Generator(bit_generator)


__all__ = [
    "OPTIMIZER_STATES",
    "ZERO_OPTIONAL_FIELDS",
    "model_tensors",
    "optimizer_fields",
    "optimizer_state_from_tensors",
    "optimizer_tensors",
    "params_from_tensors",
    "rng_from_state",
    "rng_state",
]
