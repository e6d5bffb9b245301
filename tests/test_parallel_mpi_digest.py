"""The weights digest that MPI ranks compare, and the mismatch error.

``weights_digest`` must follow its documented format (per array: the
length-prefixed name, ``dtype.str``, ``repr(shape)`` and C-order bytes, under
sha256), change with any bit, dtype, shape, byte order or name, equal the
digest of a contiguous copy, leave its input unchanged, and reject empty or
non-array states with typed errors. ``ReplicaMismatchError`` is a
``RuntimeError`` with a hint.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from cllm_spec.errors import DTypeError, EmptyInputError, ReplicaMismatchError
from cllm_spec.parallel.mpi import weights_digest


# ============================================================== digest ====
def _by_hand(*named: tuple[str, np.ndarray]) -> str:
    """The documented digest: per array, length-prefixed name, dtype.str,
    repr(shape) and C-order bytes."""
    h = hashlib.sha256()
    for name, a in named:
        for f in (
            name.encode(),
            a.dtype.str.encode(),
            repr(a.shape).encode(),
            np.ascontiguousarray(a).tobytes(),
        ):
            h.update(len(f).to_bytes(8, "little") + f)
    return h.hexdigest()


def test_weights_digest_golden():
    w = np.array([1.0, -0.0], dtype=np.float32)
    m = np.eye(2)
    assert weights_digest(w) == _by_hand(("", w))
    assert weights_digest([w, m]) == _by_hand(("0", w), ("1", m))
    assert weights_digest({"w": w, "m": m}) == _by_hand(("w", w), ("m", m))
    # A fixed value, so the format itself cannot drift: sha256 over
    # len("")="", len("<f4")="<f4", len("(1,)")="(1,)", len(4)=00 00 80 3f.
    one = np.array([1.0], dtype=np.float32)
    assert (
        weights_digest(one)
        == hashlib.sha256(
            (0).to_bytes(8, "little")
            + (3).to_bytes(8, "little")
            + b"<f4"
            + (4).to_bytes(8, "little")
            + b"(1,)"
            + (4).to_bytes(8, "little")
            + b"\x00\x00\x80\x3f"
        ).hexdigest()
    )


def test_weights_digest_sees_every_bit():
    rng = np.random.default_rng(0)
    w = rng.standard_normal(17).astype(np.float32)
    base = weights_digest(w)
    copy = w.copy()
    assert weights_digest(w) == base  # deterministic
    ulp = w.copy()
    ulp[5] = np.nextafter(ulp[5], np.float32(np.inf))
    variants = [
        ulp,
        w.astype(np.float64),
        w.view(np.int32),  # same bytes, another dtype
        w.reshape(17, 1),  # same bytes, another shape
        w.astype(">f4"),  # same values, other byte order
        [w],  # a name "0"
        {"w": w},
    ]
    digests = {weights_digest(v) for v in variants}
    assert base not in digests and len(digests) == len(variants)
    assert weights_digest(np.zeros(1)) != weights_digest(-np.zeros(1))
    assert weights_digest([w, ulp]) != weights_digest([ulp, w])
    wide = np.stack([w, w])  # (2, 17): a strided column view equals its copy
    assert weights_digest(wide[:, 3]) == weights_digest(wide[:, 3].copy())
    assert w.tobytes() == copy.tobytes()  # not mutated


@pytest.mark.parametrize(
    ("state", "error"),
    [
        ([], EmptyInputError),
        ({}, EmptyInputError),
        (3.0, DTypeError),
        ([np.zeros(2), [1.0]], DTypeError),
        ({"w": 1.0}, DTypeError),
    ],
)
def test_weights_digest_rejects(state, error):
    with pytest.raises(error):
        weights_digest(state)


def test_replica_mismatch_error_is_typed():
    err = ReplicaMismatchError("x")
    assert isinstance(err, RuntimeError) and "hint:" in str(err)
