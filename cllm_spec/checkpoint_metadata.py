"""The shapes of a checkpoint's metadata values, checked one by one.

A checkpoint's SHA-256 is a checksum, not a signature: anyone can edit the
metadata and recompute it. So every value decoded from the metadata's JSON is
checked against what cllm writes before any command sees it, and a command
never meets a list where it expects an object, or a tree where it expects a
number. The model config and the RNG state are checked where they are built
(:class:`cllm_spec.model.ModelConfig`, numpy's bit generators); the rest here::

    tokenizer     null, or an object with a string "kind" (the tokenizer
                  checks the rest when it is built from it)
    optimizer     null, or {"name": a known optimizer, "hyperparameters":
                  {str: scalar or list of scalars}, "step": int >= 0}
    scheduler     null, or {str: scalar}
    data_cursor   null, or {str: scalar}
    rng_state     null, or an object (numpy checks the rest)
    metrics       null, or {str: scalar or row}, a row being {str: scalar};
                  the rows cllm train keeps, "train" and "eval", are null or
                  rows of numbers but for a string "kind"
    run           null, or an object with some of "backend": str, "dtype":
                  str, "config": {section: {field: value}}, "step": int >= 0,
                  "cllm_version": str

A scalar is null, true, false, a number or a string. Nesting is bounded
before any of this (:mod:`cllm_spec.bounded_json`); these shapes bound it
further, to what the commands walk.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from cllm_spec.errors import CheckpointError

RUN_FIELDS: dict[str, str] = {  # key -> what it must be (see the module docstring)
    "backend": "string",
    "dtype": "string",
    "config": "sections",
    "step": "count",
    "cllm_version": "string",
}


def json_kind(value: object) -> str:
    """The JSON name of a decoded value's type: object, array, string, ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def is_scalar(value: object) -> bool:
    return json_kind(value) in ("null", "boolean", "number", "string")


def is_count(value: object) -> bool:
    """An int >= 0 (JSON true/false are not counts)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _bad(field: str, expected: str, value: object) -> CheckpointError:
    return CheckpointError(
        f"metadata.{field}: expected {expected}, got {json_kind(value)}",
        hint="the metadata was edited or written by other code; use a checkpoint "
        "written by cllm",
    )


def _expect_object(
    field: str, value: object, items: Callable[[object], bool], each: str
) -> None:
    """``value`` is an object whose every value passes ``items`` (``each``
    says what that is, for the message)."""
    if not isinstance(value, dict):
        raise _bad(field, f"an object of {each}", value)
    for key, item in value.items():
        if not items(item):
            raise _bad(f"{field}.{key}", each, item)


def _scalar_or_row(value: object) -> bool:
    return is_scalar(value) or (
        isinstance(value, dict) and all(is_scalar(v) for v in value.values())
    )


def _scalar_or_scalars(value: object) -> bool:
    return is_scalar(value) or (
        isinstance(value, list) and all(is_scalar(v) for v in value)
    )


def check_tokenizer(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or not isinstance(value.get("kind"), str):
        raise _bad("tokenizer", 'null or an object with a string "kind"', value)


def check_optimizer(value: object, names: Collection[str]) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or set(value) != {"name", "hyperparameters", "step"}:
        raise CheckpointError(
            "metadata.optimizer: expected {name, hyperparameters, step} or null"
        )
    if not isinstance(value["name"], str) or value["name"] not in names:
        raise CheckpointError(
            f"metadata.optimizer.name: expected one of {sorted(names)}, "
            f"got {value['name']!r}"
        )
    _expect_object(
        "optimizer.hyperparameters",
        value["hyperparameters"],
        _scalar_or_scalars,
        "scalars or lists of scalars",
    )
    if not is_count(value["step"]):
        raise CheckpointError(
            f"metadata.optimizer.step: expected an int >= 0, got {value['step']!r}"
        )


def check_flat(field: str, value: object) -> None:
    """null, or an object of scalars (the scheduler, the data cursor)."""
    if value is not None:
        _expect_object(field, value, is_scalar, "scalars")


def _run_row(value: object) -> bool:
    return value is None or (
        isinstance(value, dict)
        and all(
            isinstance(v, str) if k == "kind" else json_kind(v) == "number"
            for k, v in value.items()
        )
    )


def check_metrics(value: object) -> None:
    if value is None:
        return
    _expect_object(
        "metrics", value, _scalar_or_row, "scalars or rows (objects of scalars)"
    )
    assert isinstance(value, dict)
    for key in ("train", "eval"):
        if not _run_row(value.get(key)):
            raise _bad(
                f"metrics.{key}", 'null or a row of numbers and a "kind"', value[key]
            )


def check_run(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise _bad("run", "null or an object", value)
    unknown = sorted(set(value) - set(RUN_FIELDS))
    if unknown:
        raise CheckpointError(
            f"metadata.run: unknown key(s) {unknown}; expected some of "
            f"{list(RUN_FIELDS)}"
        )
    for key, item in value.items():
        kind = RUN_FIELDS[key]
        if kind == "string" and not isinstance(item, str):
            raise _bad(f"run.{key}", "a string", item)
        if kind == "count" and not is_count(item):
            raise _bad(f"run.{key}", "an int >= 0", item)
        if kind == "sections":
            _expect_object(
                f"run.{key}",
                item,
                lambda section: isinstance(section, dict),
                "sections (objects)",
            )


def check_metadata(values: Mapping[str, Any], optimizer_names: Collection[str]) -> None:
    """Every decoded metadata value but ``model_config`` and ``rng_state`` has
    the shape of the module docstring; raises CheckpointError naming the field."""
    check_tokenizer(values["tokenizer"])
    check_optimizer(values["optimizer"], optimizer_names)
    check_flat("scheduler", values["scheduler"])
    check_flat("data_cursor", values["data_cursor"])
    if values["rng_state"] is not None and not isinstance(values["rng_state"], dict):
        raise _bad("rng_state", "null or an object", values["rng_state"])
    check_metrics(values["metrics"])
    check_run(values["run"])


__all__ = [
    "RUN_FIELDS",
    "check_flat",
    "check_metadata",
    "check_metrics",
    "check_optimizer",
    "check_run",
    "check_tokenizer",
    "is_count",
    "is_scalar",
    "json_kind",
]
