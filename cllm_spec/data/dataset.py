"""``dataset.bin`` (the seed's token file) and the train/validation split.

dataset.bin
===========

The seed's layout, with the byte order fixed to little-endian (the seed wrote a
native ``size_t``, which is little-endian on the x86-64 machines it ran on)::

    offset 0   u64 N             number of tokens
    offset 8   u32 ids[N]        token ids, in corpus order
    file size  8 + 4 N           exactly; no magic, no version (as in the seed)

``write_dataset_bin(path, ids)`` writes ``ids: (N,)`` of any integer dtype whose
values fit u32 (``0 <= id < 2**32``). The file is written to a temporary file in
the same directory and renamed into place, so a crash never leaves a half-written
``dataset.bin`` behind. Errors: not an integer ndarray, ``DTypeError``; rank != 1,
``ShapeError``; ``N == 0``, ``EmptyInputError``; an id outside u32,
``IdRangeError``.

``write_dataset_stream(path, chunks, vocab_size=None) -> WrittenDataset`` writes
the same file from an iterable of id arrays, one at a time (memory: one chunk),
with the same checks per chunk; with ``vocab_size`` an id ``>= vocab_size`` is an
``IdRangeError``. It returns what it saw on the way, so nobody has to read the
file back: ``n_tokens``, ``sha256`` (of the ids as little-endian u32, the file's
body) and, with ``vocab_size``, ``counts: (V,) int64`` (how often each id occurs).
``iter_dataset_range(path, start, stop)`` reads ids ``[start, stop)`` of a
``dataset.bin`` in chunks with plain reads (no mapping, so memory stays bounded).

``read_dataset_bin(path, vocab_size=None) -> ids: (N,) uint32`` maps the file
read-only with ``np.memmap``: nothing is loaded until it is used, so corpora
larger than memory work. The file is treated as untrusted. Its size is checked
against the header before anything is mapped:

- shorter than the 8-byte header (truncated): ``ShapeError``;
- ``size - 8`` not a multiple of 4, or ``N`` not equal to ``(size - 8) / 4``
  (truncated body, trailing bytes, or a garbled or huge count; compared as
  Python ints, so a count near ``2**64`` cannot overflow): ``ShapeError``, since
  the header and the body disagree about the array's shape;
- ``N == 0``: ``EmptyInputError`` (there is nothing to train on);
- with ``vocab_size``: an id ``>= vocab_size``: ``IdRangeError`` (this scans the
  file once).

A missing file is a ``FileNotFoundError``; a path that is not a regular file (a
FIFO, a device) a ``ConfigError``, before anything is read. (``CheckpointError``
is kept for checkpoint files; these errors carry a hint about ``dataset.bin``
instead.)

Train/validation split
======================

``train_val_split(ids, val_fraction, *, min_tokens) -> (train, val)`` cuts the
token array in two contiguous pieces: the last ``n_val = round(val_fraction * N)``
tokens (Python's ``round``, ties to even) are validation, the first ``N - n_val``
are training. Both are views of ``ids`` (no copy, so a memory map stays a memory
map). The split is contiguous, not a random choice of windows, because
training windows are cut from running text: a shuffled split would put windows
of validation text right next to, and overlapping in context with, training
windows, and validation loss would measure memorisation of neighbouring text. A
single cut leaks at most one boundary.

``val_fraction`` is a real in ``[0, 1)``; ``0`` means no validation set (``val``
is empty). ``min_tokens`` is an int ``>= 2`` (one input and one target), usually
``seq_len + 1`` so that the epoch iterator of :mod:`cllm_spec.batching` has at
least one window in each part. Errors: ``ids`` not an integer ndarray,
``DTypeError``; rank != 1, ``ShapeError``; bad ``val_fraction`` or ``min_tokens``,
``ConfigError``; a part shorter than ``min_tokens`` (``val`` only when
``val_fraction > 0``), ``EmptyInputError`` naming both sizes and what would fit.
This is where an empty or tiny corpus stops, immediately: the seed looped forever
on a corpus under four characters.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from cllm_spec.checks import expect_ids, expect_in_range, expect_positive_int
from cllm_spec.errors import (
    ConfigError,
    DTypeError,
    EmptyInputError,
    IdRangeError,
    ShapeError,
)
from cllm_spec.files import open_regular

HEADER = struct.Struct("<Q")  # u64 token count, little-endian
ID_DTYPE = np.dtype("<u4")
U32_LIMIT = 2**32
DATASET_HINT = (
    "dataset.bin is a u64 little-endian count N then N u32 ids (8 + 4N bytes); "
    "rebuild it from the corpus"
)
SPLIT_HINT = "use a larger corpus, a shorter seq_len or a different val_fraction"
CHUNK_TOKENS = 1 << 20  # ids read at a time by iter_dataset_range


def _expect_id_array(name: str, ids: object) -> np.ndarray:
    """``ids`` is a 1-D ndarray of any integer dtype."""
    if not isinstance(ids, np.ndarray):
        raise DTypeError(f"{name}: expected a numpy.ndarray, got {type(ids).__name__}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise DTypeError(f"{name}: expected integer ids, got {ids.dtype}")
    if ids.ndim != 1:
        raise ShapeError(f"{name}: expected rank 1, got shape {ids.shape}")
    return ids


def write_dataset_bin(path: str | os.PathLike[str], ids: np.ndarray) -> None:
    """Write ``ids: (N,)`` as ``dataset.bin`` (u64 N, then N u32), atomically."""
    ids = _expect_id_array("ids", ids)
    if ids.size == 0:
        raise EmptyInputError("ids: a dataset needs at least one token")
    write_dataset_stream(path, [ids])


@dataclass(frozen=True)
class WrittenDataset:
    """What :func:`write_dataset_stream` wrote."""

    n_tokens: int
    sha256: str  # of the ids as little-endian u32 bytes
    counts: np.ndarray | None  # (V,) int64 occurrences of each id, with vocab_size


def write_dataset_stream(
    path: str | os.PathLike[str],
    chunks: Iterable[np.ndarray],
    *,
    vocab_size: int | None = None,
) -> WrittenDataset:
    """Write the ids of ``chunks`` in order as ``dataset.bin``, atomically."""
    limit = U32_LIMIT if vocab_size is None else vocab_size
    if vocab_size is not None:
        expect_positive_int("vocab_size", vocab_size)
    counts = None if vocab_size is None else np.zeros(vocab_size, dtype=np.int64)
    digest = hashlib.sha256()
    n = 0
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=target.name, suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(HEADER.pack(0))  # the count is known at the end
            for chunk in chunks:
                body = _u32_chunk(chunk, limit)
                fh.write(body.data)
                digest.update(body.data)
                n += body.size
                if counts is not None:
                    counts += np.bincount(body, minlength=limit)
            if n == 0:
                raise EmptyInputError("ids: a dataset needs at least one token")
            fh.seek(0)
            fh.write(HEADER.pack(n))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return WrittenDataset(n, digest.hexdigest(), counts)


def _u32_chunk(chunk: np.ndarray, limit: int) -> np.ndarray:
    """``chunk`` as contiguous little-endian u32, every id in ``[0, limit)``."""
    ids = _expect_id_array("ids", chunk)
    if ids.size == 0:
        return np.zeros(0, dtype=ID_DTYPE)
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= limit:
        bad = lo if lo < 0 else hi
        where = (
            "dataset.bin stores u32 ids"
            if limit == U32_LIMIT
            else (f"ids must lie in [0, {limit})")
        )
        raise IdRangeError(f"ids: {where}, found {bad}")
    return np.ascontiguousarray(ids, dtype=ID_DTYPE)


def iter_dataset_range(
    path: str | os.PathLike[str],
    start: int,
    stop: int,
    chunk_tokens: int = CHUNK_TOKENS,
) -> Iterator[np.ndarray]:
    """Ids ``[start, stop)`` of a ``dataset.bin``, in ``(<= chunk_tokens,) uint32``
    arrays read with plain reads (the file is not mapped)."""
    chunk_tokens = expect_positive_int("chunk_tokens", chunk_tokens)
    handle, size = open_regular(path, "dataset.bin", ConfigError)
    with handle:
        count = (size - HEADER.size) // ID_DTYPE.itemsize
        if not 0 <= start <= stop <= count:
            raise ShapeError(
                f"{path}: ids [{start}, {stop}) are outside the file's {count} ids",
                hint=DATASET_HINT,
            )
        handle.seek(HEADER.size + start * ID_DTYPE.itemsize)
        for pos in range(start, stop, chunk_tokens):
            want = min(chunk_tokens, stop - pos)
            data = handle.read(want * ID_DTYPE.itemsize)
            if len(data) != want * ID_DTYPE.itemsize:
                raise ShapeError(f"{path}: truncated while reading", hint=DATASET_HINT)
            yield np.frombuffer(data, dtype=ID_DTYPE)


def read_dataset_bin(
    path: str | os.PathLike[str], vocab_size: int | None = None
) -> np.ndarray:
    """Map ``dataset.bin`` read-only as ``(N,) uint32``; sizes are checked first."""
    file = Path(path)
    handle, size = open_regular(file, "dataset.bin", ConfigError)
    with handle:
        if size < HEADER.size:
            raise ShapeError(
                f"{file}: truncated: {size} bytes, the header alone needs "
                f"{HEADER.size}",
                hint=DATASET_HINT,
            )
        (count,) = HEADER.unpack(handle.read(HEADER.size))
        # Mapped through the checked descriptor: the path is not opened again.
        ids = _map_ids(handle, file, size, count)
    if vocab_size is not None:
        expect_ids(
            "dataset.bin ids", ids, expect_positive_int("vocab_size", vocab_size)
        )
    return ids


def _map_ids(handle: BinaryIO, file: Path, size: int, count: int) -> np.ndarray:
    body = size - HEADER.size
    if body % ID_DTYPE.itemsize or count != body // ID_DTYPE.itemsize:
        raise ShapeError(
            f"{file}: header says {count} tokens ({HEADER.size + 4 * count} bytes), "
            f"but the file has {size} bytes",
            hint=DATASET_HINT,
        )
    if count == 0:
        raise EmptyInputError(f"{file}: the dataset has no tokens", hint=DATASET_HINT)
    return np.memmap(
        handle, dtype=ID_DTYPE, mode="r", offset=HEADER.size, shape=(count,)
    )


def train_val_split(
    ids: np.ndarray, val_fraction: float, *, min_tokens: int
) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous split: the last ``round(val_fraction * N)`` tokens validate."""
    ids = _expect_id_array("ids", ids)
    fraction = expect_in_range("val_fraction", val_fraction, 0.0, 1.0, hi_open=True)
    min_tokens = expect_positive_int("min_tokens", min_tokens)
    if min_tokens < 2:
        raise ConfigError(
            "min_tokens: expected >= 2 (a window needs an input and a target), got 1"
        )
    n = ids.size
    n_val = round(fraction * n)
    n_train = n - n_val
    want_val = min_tokens if fraction > 0 else 0
    if n_train < min_tokens or n_val < want_val:
        parts = "each part needs" if want_val else "training needs"
        raise EmptyInputError(
            f"corpus too small: {n} tokens split into {n_train} train + {n_val} "
            f"validation (val_fraction={fraction}), but {parts} at least "
            f"{min_tokens} tokens",
            hint=SPLIT_HINT,
        )
    return ids[:n_train], ids[n_train:]
