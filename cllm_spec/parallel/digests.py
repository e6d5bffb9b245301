"""Digests that let MPI ranks check they hold the same state and read the same
batches (:mod:`cllm_spec.parallel.mpi`): a SHA-256 over names, dtypes, shapes
and bytes, so any bit of any value counts."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cllm_spec.errors import DTypeError, EmptyInputError


def _arrays_of(state: object) -> list[tuple[str, np.ndarray]]:
    """``(name, array)`` pairs of a state, in a fixed order (see weights_digest)."""
    if isinstance(state, np.ndarray):
        pairs: list[tuple[str, object]] = [("", state)]
    elif isinstance(state, Mapping):
        pairs = [(str(k), v) for k, v in state.items()]
    elif isinstance(state, list | tuple):
        pairs = [(str(i), v) for i, v in enumerate(state)]
    else:
        raise DTypeError(
            f"state: expected an ndarray, a sequence or a mapping of ndarrays, got "
            f"{type(state).__name__}"
        )
    if not pairs:
        raise EmptyInputError("state: nothing to digest")
    for name, a in pairs:
        if not isinstance(a, np.ndarray):
            raise DTypeError(
                f"state[{name!r}]: expected an ndarray, got {type(a).__name__}"
            )
    return [(name, a) for name, a in pairs if isinstance(a, np.ndarray)]


def weights_digest(state: object) -> str:
    """SHA-256 (hex) of the bytes of ``state``: an ndarray, a list/tuple of them or
    a mapping name -> ndarray (in its iteration order).

    For each array, in order: its name (the mapping key or the index), its
    dtype (``dtype.str``, so byte order counts), its shape and its C-order bytes
    are hashed, each length-prefixed. So the digest changes with any bit of any
    value (``-0.0`` differs from ``0.0``, NaN payloads count), with a dtype or
    shape, or with the names; it does not depend on memory layout (a
    non-contiguous view digests like its contiguous copy).

    Errors: anything else, or a member that is not an ndarray: ``DTypeError``;
    an empty sequence or mapping: ``EmptyInputError``.
    """
    h = hashlib.sha256()
    for name, a in _arrays_of(state):
        data = np.ascontiguousarray(a)
        fields = (
            name.encode(),
            a.dtype.str.encode(),
            repr(tuple(a.shape)).encode(),
            data.tobytes(),
        )
        for f in fields:
            h.update(len(f).to_bytes(8, "little"))
            h.update(f)
    return h.hexdigest()


def batch_fingerprint(parts: Sequence[Sequence[Any]]) -> str:
    """SHA-256 of every group micro-batch of a step, in (micro, group) order."""
    h = hashlib.sha256()

    def feed(obj: Any, where: str) -> None:
        if obj is None:
            h.update(b"N")
        elif isinstance(obj, np.ndarray):
            h.update(b"A" + weights_digest(obj).encode())
        elif isinstance(obj, list | tuple):
            h.update(b"T" + len(obj).to_bytes(8, "little"))
            for i, item in enumerate(obj):
                feed(item, f"{where}[{i}]")
        else:
            raise DTypeError(
                f"{where}: cannot fingerprint a {type(obj).__name__} to check that "
                f"all ranks read the same batch",
                hint="use ndarrays or tuples of them, or pass verify_batches=False",
            )

    for m, groups in enumerate(parts):
        for g, part in enumerate(groups):
            feed(part, f"micro-batch {m} group {g}")
    return h.hexdigest()


__all__ = ["batch_fingerprint", "weights_digest"]
