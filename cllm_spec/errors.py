"""Typed errors of the spec.

Every error is a :class:`CllmError` and also a builtin exception, so callers can
catch either ``cllm_spec.errors.ShapeError`` or plain ``ValueError``. Each class
carries a one-line ``hint`` that is appended to the message: what to do next, not
what went wrong (the message says that).

    >>> raise ShapeError("logits: expected rank 2, got (4,)")
    Traceback (most recent call last):
    ...
    cllm_spec.errors.ShapeError: logits: expected rank 2, got (4,)
      hint: check the shapes in the docstring of the function you called
"""

from __future__ import annotations


class CllmError(Exception):
    """Base of every error raised on purpose by the spec and its backends."""

    hint = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint_text = self.hint if hint is None else hint
        full = f"{message}\n  hint: {self.hint_text}" if self.hint_text else message
        super().__init__(full)


class ShapeError(CllmError, ValueError):
    """An array has the wrong rank or shape, or shapes disagree."""

    hint = "check the shapes in the docstring of the function you called"


class DTypeError(CllmError, TypeError):
    """An array has a dtype the function does not accept (nothing is cast)."""

    hint = "convert explicitly, e.g. x.astype(np.float32); ids must be integers"


class IdRangeError(CllmError, ValueError):
    """A token or class id lies outside [0, V) (and is not the ignore_index)."""

    hint = "ids must satisfy 0 <= id < vocab size; check the tokenizer and vocab"


class NonFiniteError(CllmError, ValueError):
    """NaN or infinity where the spec requires finite values."""

    hint = "look for an exploding loss or a division by zero upstream"


class EmptyInputError(CllmError, ValueError):
    """An input has no elements where at least one is required."""

    hint = "pass at least one element; empty batches and corpora are errors"


class ConfigError(CllmError, ValueError):
    """A hyperparameter or config field is out of its documented range."""

    hint = "see the documented range of the named field"


class CacheFullError(CllmError, RuntimeError):
    """Appending to a KV cache would exceed its preallocated T_max."""

    hint = "allocate the cache with a larger T_max, or reset it before reuse"


class QueueClosedError(CllmError, RuntimeError):
    """put on a closed queue or pool, or get on a closed and drained one."""

    hint = "the queue or pool was closed; stop producing or consuming"


class QueueTimeoutError(CllmError, TimeoutError):
    """A blocking queue or pool operation did not complete within its timeout."""

    hint = "the other side may be stalled; raise the timeout or check for deadlock"


class RefCountError(CllmError, RuntimeError):
    """A pooled batch handle is used wrongly: released more often than acquired or
    retained, retained after its last release, stale after its slot was reused,
    or from another pool."""

    hint = "each acquire/retain must be matched by exactly one release"


class LifecycleError(CllmError, RuntimeError):
    """An operation that the parallel coordinator's current state does not allow."""

    hint = "follow INITIALIZING -> RUNNING <-> PAUSED -> STOPPING -> STOPPED"


class ReplicaMismatchError(CllmError, RuntimeError):
    """Ranks that must hold identical data do not (weights, batches, call order)."""

    hint = (
        "every rank must load the same checkpoint, read the same batches in the "
        "same order and make the same engine calls; the optimizer must be "
        "deterministic"
    )


class CheckpointError(CllmError, ValueError):
    """A checkpoint file is truncated, tampered with, foreign or inconsistent."""

    hint = "the file is not a valid CLLM checkpoint; use an earlier checkpoint"


class BackendError(CllmError, ImportError):
    """A backend cannot be found or cannot be loaded."""

    hint = "run `cllm backends` to list the available backends"


class Unsupported(CllmError, NotImplementedError):
    """A backend does not implement a component or an option of it."""

    hint = "use another backend for this feature"


class CllmWarning(UserWarning):
    """Base of the warnings of the spec (the ``cllm`` command prints each as one
    line, ``cllm COMMAND: warning: MESSAGE``)."""


__all__ = [
    "BackendError",
    "CacheFullError",
    "CheckpointError",
    "CllmError",
    "CllmWarning",
    "ConfigError",
    "DTypeError",
    "EmptyInputError",
    "IdRangeError",
    "LifecycleError",
    "NonFiniteError",
    "QueueClosedError",
    "QueueTimeoutError",
    "RefCountError",
    "ReplicaMismatchError",
    "ShapeError",
    "Unsupported",
]
