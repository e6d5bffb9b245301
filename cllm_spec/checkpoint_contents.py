"""What a checkpoint's header must say beyond its bytes: the metadata decoded
and every value checked, and tensors exactly those the metadata implies.

These are checks 5 and 6 of :func:`cllm_spec.checkpoint.load` (its module
docstring has the order); :func:`cllm_spec.checkpoint.save` runs them too, on
what it is about to write. Every failure is a :class:`CheckpointError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from cllm_spec import bounded_json, checks
from cllm_spec import checkpoint_format as fmt
from cllm_spec.checkpoint_format import METADATA_FIELDS
from cllm_spec.checkpoint_metadata import check_metadata
from cllm_spec.checkpoint_state import (
    OPTIMIZER_STATES,
    ZERO_OPTIONAL_FIELDS,
    optimizer_fields,
    rng_from_state,
)
from cllm_spec.errors import CheckpointError, ConfigError
from cllm_spec.model import ModelConfig, param_shapes


def decode_metadata(
    meta: Mapping[str, str], max_items: int | None = None
) -> dict[str, Any]:
    """JSON-decoded metadata with ``model_config`` as a ModelConfig, every
    value checked (:mod:`cllm_spec.checkpoint_metadata`); the values share
    ``max_items`` JSON items (:mod:`cllm_spec.bounded_json`; None: the limit)."""
    if max_items is None:
        max_items = fmt.MAX_JSON_ITEMS
    out: dict[str, Any] = {}
    for key in METADATA_FIELDS:
        try:
            out[key], used = bounded_json.loads(
                meta[key], max_depth=fmt.MAX_JSON_DEPTH, max_items=max_items
            )
        except bounded_json.JSONLimitError as exc:
            raise CheckpointError(f"metadata.{key}: {exc}") from exc
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"metadata.{key}: missing or not JSON") from exc
        max_items -= used
    try:
        out["model_config"] = ModelConfig.from_dict(out["model_config"])
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"metadata.model_config: {exc}") from exc
    check_metadata(out, OPTIMIZER_STATES)
    if out["rng_state"] is not None:
        try:
            rng_from_state(out["rng_state"])
        # NumPy's state setters raise several types for malformed states.
        except Exception as exc:
            raise CheckpointError(
                f"metadata.rng_state: cannot be restored: {exc}"
            ) from exc
    return out


def validate_contents(
    specs: Mapping[str, tuple[tuple[int, ...], np.dtype[Any]]],
    metadata: Mapping[str, Any],
) -> None:
    """Tensor names, shapes and dtypes (``specs``: name -> (shape, dtype)) are
    exactly those the metadata implies."""
    cfg = metadata["model_config"]
    # Count first: a hostile config (n_layer = 10**9) must not make us build
    # the list of its names; past this check that list is no longer than the
    # file's own tensor list.
    n_model = 4 + 12 * cfg.n_layer + (0 if cfg.tie_embeddings else 1)
    if n_model > len(specs):
        raise CheckpointError(
            f"the model config has {n_model} parameters (missing tensors), "
            f"but the file holds only {len(specs)} tensors"
        )
    shapes = param_shapes(cfg)
    expected = dict(shapes)
    optimizer = metadata.get("optimizer")
    if optimizer is not None:
        for field in optimizer_fields(optimizer["name"]):
            names = {f"optim.{field}.{name}": shape for name, shape in shapes.items()}
            if field in ZERO_OPTIONAL_FIELDS and not any(n in specs for n in names):
                continue  # left out: all zeros (checkpoint_state.optimizer_tensors)
            expected |= names
    missing = sorted(set(expected) - set(specs))
    extra = sorted(set(specs) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"tensors do not match the model config: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
            f"{'...' if len(extra) > 5 else ''}"
        )
    dtypes = set()
    for name, shape in expected.items():
        got_shape, dtype = specs[name]
        if tuple(got_shape) != shape:
            raise CheckpointError(
                f"tensor {name!r}: shape {tuple(got_shape)}, the config needs {shape}"
            )
        dtypes.add(dtype.newbyteorder("="))
    if len(dtypes) != 1 or next(iter(dtypes)) not in checks.FLOAT_DTYPES:
        raise CheckpointError(
            f"tensors must share one float32 or float64 dtype, got "
            f"{sorted(str(d) for d in dtypes)}"
        )


__all__ = ["decode_metadata", "validate_contents"]
