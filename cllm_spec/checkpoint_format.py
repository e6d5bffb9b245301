"""The bytes of a checkpoint file: its header, its checksum, and reading both
back within limits.

The format, the limits and the order of the checks are specified in
:mod:`cllm_spec.checkpoint`, which writes and loads checkpoints with the
functions here; this module knows bytes and JSON, not models. Every failure
is a :class:`CheckpointError` naming the file, with a hint.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from cllm_spec import bounded_json
from cllm_spec.checkpoint_metadata import is_count
from cllm_spec.errors import CheckpointError
from cllm_spec.files import open_regular

FORMAT_NAME = "cllm-checkpoint"
FORMAT_VERSION = 1
# Limits on what a file may make the reader parse (cllm_spec.checkpoint, "Limits").
MAX_HEADER_BYTES = 100 * 2**20
MAX_TENSORS = 65_536
MAX_JSON_DEPTH = 32
MAX_JSON_ITEMS = 1_000_000
_CHUNK = 2**20  # bytes read at a time while checking the header and the checksum
METADATA_FIELDS = (
    "model_config",
    "tokenizer",
    "optimizer",
    "scheduler",
    "data_cursor",
    "rng_state",
    "metrics",
    "run",  # the training run: {"backend", "dtype", "config", ...}
)
AUTOMATIC_FIELDS = ("format", "format_version", "sha256")
DTYPES: dict[str, np.dtype[Any]] = {
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
}
CODES = {dt.newbyteorder("="): code for code, dt in DTYPES.items()}


def json_text(value: Any) -> str:
    """Compact JSON with sorted keys: the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def _manifest_chunks(
    meta: Mapping[str, str], entries: Iterable[tuple[str, str, list[int]]]
) -> Iterator[bytes]:
    """The bytes of ``json_text({"metadata": meta, "tensors": [...]})``, the first
    part of the checksum, in pieces: a 100 MiB header is never copied whole."""
    manifest = {"metadata": dict(meta), "tensors": [list(e) for e in entries]}
    pending: list[str] = []
    size = 0
    for piece in _ENCODER.iterencode(manifest):
        pending.append(piece)
        size += len(piece)
        if size >= _CHUNK:
            yield "".join(pending).encode()
            pending, size = [], 0
    yield "".join(pending).encode()


def checksum(
    meta: Mapping[str, str],
    entries: list[tuple[str, str, list[int]]],
    blobs: Iterable[np.ndarray],
) -> str:
    digest = hashlib.sha256()
    for chunk in _manifest_chunks(meta, entries):
        digest.update(chunk)
    for blob in blobs:  # C-contiguous arrays: hashed in place, no copies
        digest.update(blob.data)
    return digest.hexdigest()


def header_bytes(
    full_meta: Mapping[str, str], entries: list[tuple[str, str, list[int]]]
) -> bytes:
    """The 8 length bytes and the padded JSON header of tensors laid out back
    to back in the order of ``entries``."""
    header: dict[str, Any] = {"__metadata__": dict(full_meta)}
    offset = 0
    for name, code, shape in entries:
        size = math.prod(shape) * DTYPES[code].itemsize
        header[name] = {
            "data_offsets": [offset, offset + size],
            "dtype": code,
            "shape": shape,
        }
        offset += size
    text = json_text(header).encode()
    text += b" " * (-len(text) % 8)  # 8-byte alignment of the data, as safetensors pads
    return len(text).to_bytes(8, "little") + text


def fail(path: Path, message: str, hint: str | None = None) -> CheckpointError:
    """The error for ``path``: ``"<path>: <message>"``."""
    return CheckpointError(f"{path}: {message}", hint=hint)


_TRUNCATED = "the file is truncated or corrupted; use an earlier checkpoint"
EDITED = (
    "the file is damaged, or was edited or written by other code; use an earlier "
    "checkpoint"
)
_NOT_OURS = (
    "pass a checkpoint written by cllm (ckpt-<step>.safetensors in a run "
    "directory); if this was one, it is damaged: use an earlier checkpoint"
)
_FOREIGN = (
    "this is a safetensors file written by another program; load it with safetensors"
)
# Bytes a header written by cllm can hold: its JSON escapes everything else.
_NOT_HEADER_BYTE = re.compile(rb"[^\t\n\r\x20-\x7e]")


class Entry(NamedTuple):
    """One tensor of the header: offsets relative to the tensor bytes."""

    name: str
    code: str  # "F32", ...
    shape: tuple[int, ...]
    begin: int
    end: int


class Layout(NamedTuple):
    """A header that passed every structural check."""

    meta: dict[str, str]  # __metadata__
    entries: list[Entry]  # in name order
    start: int  # file offset of the tensor bytes
    items: int  # JSON items of the header (bounded_json), counted against the cap


def open_checkpoint(path: Path) -> tuple[BinaryIO, int]:
    """``(file, size)`` of the regular file at ``path`` (never a FIFO, a
    device or a directory: :func:`cllm_spec.files.open_regular`)."""
    try:
        return open_regular(path, "checkpoint", CheckpointError)
    except FileNotFoundError as exc:
        raise fail(
            path, "no such file", "check the path; `ls` the checkpoint directory"
        ) from exc
    except OSError as exc:
        raise fail(
            path, f"cannot be read: {exc}", "check the file's permissions"
        ) from exc


def _read_into(path: Path, fh: BinaryIO, offset: int, out: memoryview) -> None:
    """Fill ``out`` with the bytes at ``offset`` (the file may shrink meanwhile)."""
    done = 0
    try:
        fh.seek(offset)
        while done < len(out):
            got = fh.readinto(out[done:])  # type: ignore[attr-defined]
            if not got:
                break
            done += got
    except OSError as exc:
        raise fail(
            path, f"cannot be read: {exc}", "check the disk and the file"
        ) from exc
    if done < len(out):
        raise fail(path, "the file ended early while being read", _TRUNCATED)


def read_layout(path: Path, fh: BinaryIO, size: int) -> Layout:
    """The header, checked structurally; nothing is read past it."""
    if size < 8:
        raise fail(
            path, f"{size} bytes is too short for a checkpoint (>= 8)", _TRUNCATED
        )
    first = memoryview(bytearray(min(size, 9)))
    _read_into(path, fh, 0, first)
    n = int.from_bytes(first[:8], "little")
    # A safetensors file begins with its header's length, which no real file
    # brings near 2**48, and then "{": text and other files fail both.
    if bytes(first[8:9]) != b"{" or n >= 2**48:
        raise fail(
            path,
            "not a CLLM checkpoint: it does not begin like a safetensors file "
            "(an 8-byte length, then a JSON object)",
            _NOT_OURS,
        )
    if n > size - 8 or n > MAX_HEADER_BYTES:
        raise fail(
            path,
            f"header length {n} exceeds the file ({size} bytes) or the "
            f"{MAX_HEADER_BYTES}-byte limit",
            _TRUNCATED,
        )
    try:
        header, items = bounded_json.loads(
            _read_header_text(path, fh, n),
            max_depth=MAX_JSON_DEPTH,
            max_items=MAX_JSON_ITEMS,
        )
    except bounded_json.JSONLimitError as exc:
        raise fail(path, f"header: {exc}", EDITED) from exc
    except ValueError as exc:
        raise fail(path, f"header is not JSON: {exc}", _TRUNCATED) from exc
    if not isinstance(header, dict):
        raise fail(path, "header is not a JSON object", _TRUNCATED)
    meta = _check_format(path, header)
    entries = _check_entries(path, header, size - 8 - n)
    return Layout(meta, entries, 8 + n, items)


def _read_header_text(path: Path, fh: BinaryIO, n: int) -> str:
    """The ``n`` header bytes after the length, as text, read piece by piece:
    a byte cllm never writes (a sparse file's zeros, binary data) stops the
    read before the next piece is taken."""
    buffer = np.empty(n, np.uint8)  # pages are only taken as they are filled
    view = buffer.data
    for begin in range(0, n, _CHUNK):
        piece = view[begin : begin + _CHUNK]
        _read_into(path, fh, 8 + begin, piece)
        bad = _NOT_HEADER_BYTE.search(piece)
        if bad is not None:
            raise fail(
                path,
                f"header byte {begin + bad.start()} is {piece[bad.start()]:#04x}, "
                "not printable ASCII: the file is damaged or not a CLLM checkpoint",
                _TRUNCATED,
            )
    return str(view, "ascii")


def _check_format(path: Path, header: Mapping[str, Any]) -> dict[str, str]:
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise fail(path, "no string __metadata__ map: not a CLLM checkpoint", _FOREIGN)
    if meta.get("format") != FORMAT_NAME:
        raise fail(
            path, f"format is {meta.get('format')!r}, not {FORMAT_NAME!r}", _FOREIGN
        )
    version = meta.get("format_version")
    if version != str(FORMAT_VERSION):
        raise fail(
            path,
            f"format version {version!r} is not supported (this cllm reads "
            f"version {FORMAT_VERSION})",
            "a different cllm version wrote this file; use a matching cllm",
        )
    expected = set(METADATA_FIELDS) | set(AUTOMATIC_FIELDS)
    if set(meta) != expected:
        raise fail(
            path,
            f"metadata keys {sorted(meta)} differ from {sorted(expected)}",
            _TRUNCATED,
        )
    return meta


def _check_entries(path: Path, header: Mapping[str, Any], body: int) -> list[Entry]:
    """Each tensor entry is well-formed and the entries tile [0, body) exactly."""
    if len(header) - 1 > MAX_TENSORS:
        raise fail(
            path,
            f"the header lists {len(header) - 1:,} tensors, more than the "
            f"{MAX_TENSORS:,} a checkpoint may hold",
            EDITED,
        )
    entries = []
    for name in sorted(k for k in header if k != "__metadata__"):
        entry = header[name]
        if not isinstance(entry, dict) or set(entry) != {
            "data_offsets",
            "dtype",
            "shape",
        }:
            raise fail(path, f"tensor {name!r}: malformed header entry", _TRUNCATED)
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise fail(path, f"tensor {name!r}: unknown dtype {dtype!r}", _TRUNCATED)
        if not isinstance(shape, list) or not all(is_count(d) for d in shape):
            raise fail(path, f"tensor {name!r}: bad shape {shape!r}", _TRUNCATED)
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(is_count(o) for o in offsets)
            or not offsets[0] <= offsets[1] <= body
        ):
            raise fail(
                path,
                f"tensor {name!r}: offsets {offsets!r} outside the data",
                _TRUNCATED,
            )
        if offsets[1] - offsets[0] != math.prod(shape) * DTYPES[dtype].itemsize:
            raise fail(
                path, f"tensor {name!r}: offsets disagree with its shape", _TRUNCATED
            )
        entries.append(Entry(name, dtype, tuple(shape), offsets[0], offsets[1]))
    position = 0
    for entry in sorted(entries, key=lambda e: (e.begin, e.end)):
        if entry.begin != position:
            raise fail(path, "tensor data overlaps or leaves gaps", _TRUNCATED)
        position = entry.end
    if position != body:
        raise fail(path, f"tensor data covers {position} of {body} bytes", _TRUNCATED)
    return entries


def verify_checksum(path: Path, fh: BinaryIO, layout: Layout) -> None:
    """Hash the manifest and the tensor bytes in name order through one small
    buffer, before anything is allocated for the tensors."""
    stored = {k: v for k, v in layout.meta.items() if k != "sha256"}
    manifest = [(e.name, e.code, list(e.shape)) for e in layout.entries]
    digest = hashlib.sha256()
    for chunk in _manifest_chunks(stored, manifest):
        digest.update(chunk)
    buffer = memoryview(bytearray(_CHUNK))
    for entry in layout.entries:
        for begin in range(entry.begin, entry.end, _CHUNK):
            piece = buffer[: min(_CHUNK, entry.end - begin)]
            _read_into(path, fh, layout.start + begin, piece)
            digest.update(piece)
    if digest.hexdigest() != layout.meta["sha256"]:
        raise fail(
            path,
            "checksum mismatch: the tensors or the metadata were modified",
            "the file is corrupted; use an earlier checkpoint",
        )


def read_tensors(path: Path, fh: BinaryIO, layout: Layout) -> dict[str, np.ndarray]:
    """Each tensor read straight into its own array, one at a time."""
    tensors = {}
    for entry in layout.entries:
        try:
            arr = np.empty(entry.shape, dtype=DTYPES[entry.code])
        except MemoryError as exc:
            raise fail(
                path,
                f"tensor {entry.name!r}: not enough memory for "
                f"{entry.end - entry.begin:,} bytes",
                "free memory, or load the checkpoint on a larger machine",
            ) from exc
        raw = arr.reshape(-1).view(np.uint8)  # a view: the read fills ``arr``
        _read_into(path, fh, layout.start + entry.begin, raw.data)
        # Native byte order, own memory: callers may write into the arrays.
        tensors[entry.name] = arr.astype(arr.dtype.newbyteorder("="), copy=False)
    return tensors


__all__ = [
    "AUTOMATIC_FIELDS",
    "CODES",
    "DTYPES",
    "EDITED",
    "Entry",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Layout",
    "MAX_HEADER_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_JSON_ITEMS",
    "MAX_TENSORS",
    "METADATA_FIELDS",
    "checksum",
    "fail",
    "header_bytes",
    "json_text",
    "open_checkpoint",
    "read_layout",
    "read_tensors",
    "verify_checksum",
]
